"""`qwenvl-ft demo MODEL_OR_RUN [--compare BASE_OR_RUN]`: a web page to try a model on your images.

Upload images (or a video, for the generations that take one), ask, and read the streamed
answer; every box in it is drawn on the image in its original pixels, labelled with its
reference text. With --compare the same question goes to a second model (the base, another run)
and the answers and boxes stand side by side. Example questions come from the run's eval data.
MODEL_OR_RUN is anything `predict` loads: a base or merged checkpoint, a full run, a LoRA run or
checkpoint (on the base it recorded). Binds to 127.0.0.1 unless --host says otherwise.

--search FOLDER --embedder EMBEDDING_MODEL_OR_RUN adds a search tab: a text query against the
folder's images, ranked by the embedding model (Qwen3-VL-Embedding or an `embedding` run) and, with
--reranker, the top --rerank-top reordered by it. MODEL_OR_RUN may then be left out (search only).
Needs the `demo` extra: pip install 'qwenvl-ft[demo]'.
"""

from __future__ import annotations

import argparse

from .predict_cmd import add_thinking_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a web page to try a model or a run, optionally beside its base",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", nargs="?", help="checkpoint directory, or a qwenvl-ft run / checkpoint directory (chat tab)"
    )
    p.add_argument("--compare", metavar="BASE_OR_RUN", help="a second model answering the same questions")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--base", help="base model directory, overriding the one a LoRA run recorded")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when there is one)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-pixels", type=int, help="pixel budget of an image (default: the checkpoint's)")
    p.add_argument("--max-upload-mb", type=int, default=100, help="largest upload accepted (default 100)")
    add_thinking_argument(p)
    s = p.add_argument_group("search tab")
    s.add_argument("--search", metavar="FOLDER", help="images to search (every image file under it)")
    s.add_argument("--embedder", help="the embedding model or run that ranks them")
    s.add_argument("--reranker", help="a reranker model or run that reorders the top results")
    s.add_argument("--rerank-top", type=int, default=10, help="results the reranker reorders (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo.app import _gradio, build, serve
    from ..demo.core import load_models
    from ..infer import check_thinking

    _gradio()  # a missing extra is said before minutes of model loading
    if bool(args.search) != bool(args.embedder):
        raise SystemExit("demo: --search FOLDER and --embedder MODEL go together")
    if args.reranker and not args.search:
        raise SystemExit("demo: --reranker is for the search tab (--search, --embedder)")
    if not args.model and not args.search:
        raise SystemExit("demo: give a model to chat with, or --search FOLDER --embedder MODEL, or both")
    search = _search_index(args) if args.search else None
    models = (
        load_models(
            args.model,
            args.compare,
            args.dtype,
            args.base,
            args.device,
            args.max_pixels,
            args.reasoning_effort,
        )
        if args.model
        else []
    )
    if args.thinking is not None and models and not any(m.predictor.family.thinking for m in models):
        check_thinking(models[0].predictor.family, args.thinking)  # refused by name
    for m in models:
        line = m.predictor.thinking_line()
        if line and args.thinking is None:
            print(f"{m.title}: {line}")
    demo = build(
        models,
        args.max_new_tokens,
        args.system,
        examples_from=args.model,
        thinking=args.thinking,
        search=search,
    )
    serve(demo, args.host, args.port, args.max_upload_mb)
    return 0


def _search_index(args: argparse.Namespace):
    from ..demo.search import SearchIndex
    from ..retrieval import Embedder, Reranker

    embedder = Embedder.load(args.embedder, args.dtype, args.device)
    reranker = Reranker.load(args.reranker, args.dtype, args.device) if args.reranker else None
    return SearchIndex(embedder, args.search, reranker, args.rerank_top)
