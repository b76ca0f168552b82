"""`qwenvl-ft demo MODEL_OR_RUN [--compare BASE_OR_RUN]`: a web page to try a model on your images.

Upload images (or a video, for the generations that take one), ask, and read the streamed
answer; every box in it is drawn on the image in its original pixels, labelled with its
reference text. With --compare the same question goes to a second model (the base, another run)
and the answers and boxes stand side by side. Example questions come from the run's eval data.
MODEL_OR_RUN is anything `predict` loads: a base or merged checkpoint, a full run, a LoRA run or
checkpoint (on the base it recorded). Binds to 127.0.0.1 unless --host says otherwise.
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
    p.add_argument("model", help="checkpoint directory, or a qwenvl-ft run / checkpoint directory")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo.app import _gradio, build, serve
    from ..demo.core import load_models
    from ..infer import check_thinking

    _gradio()  # a missing extra is said before minutes of model loading
    models = load_models(
        args.model, args.compare, args.dtype, args.base, args.device, args.max_pixels, args.reasoning_effort
    )
    if args.thinking is not None and not any(m.predictor.family.thinking for m in models):
        check_thinking(models[0].predictor.family, args.thinking)  # refused by name
    for m in models:
        line = m.predictor.thinking_line()
        if line and args.thinking is None:
            print(f"{m.title}: {line}")
    demo = build(models, args.max_new_tokens, args.system, examples_from=args.model, thinking=args.thinking)
    serve(demo, args.host, args.port, args.max_upload_mb)
    return 0
