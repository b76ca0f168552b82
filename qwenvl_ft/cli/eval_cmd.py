"""`qwenvl-ft eval SOURCE [--data DATA] [--task vqa|caption|ocr|retrieval] [--output report.json]`: task metrics.

SOURCE is either a predictions JSONL (what `qwenvl-ft predict` writes) or a model: a base or
merged checkpoint, or a run / checkpoint directory, which first generates answers for --data
(greedy, as `qwenvl-ft predict`) and is then scored. Lines whose reference has boxes are scored as
grounding (IoU and accuracy at IoU 0.5 / 0.75, boxes read back to pixels in the generation's
own convention); the other lines by --task: vqa (normalised exact match, VQAv2 accuracy when a
line has several `answers`), caption (CIDEr-D, BLEU) or ocr (character error rate). Reasoning
(thinking generations: --thinking on|off) is never scored: boxes and answers are read from the
answer after it.

--task retrieval: SOURCE is an embedding model or run (Qwen3-VL-Embedding, `train.method: embedding`)
and --data a retrieval file (README 'Retrieval'): its documents are the corpus, each query's positive
the relevant one; recall@1/5/10, MRR and nDCG@10, and again after --reranker reorders each query's
top --rerank-top documents.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .predict_cmd import add_thinking_argument, load_predictor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score predictions, or a model on a dataset (grounding, VQA, captions, OCR)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="predictions JSONL, or a model / run directory (then --data)")
    p.add_argument(
        "--task",
        choices=["vqa", "caption", "ocr", "retrieval"],
        default="vqa",
        help="metric for text answers, or retrieval (an embedding model ranks a corpus)",
    )
    p.add_argument("--output", help="write the report as JSON here")
    m = p.add_argument_group("with a model as SOURCE")
    m.add_argument("--data", help="dataset to generate answers for (any format `data check` reads)")
    m.add_argument(
        "--predictions", help="keep the generated answers here (default: a temporary file, removed)"
    )
    m.add_argument("--max-new-tokens", type=int, default=128)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--limit", type=int, help="only the first N samples")
    m.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    m.add_argument("--base", help="base model directory, overriding the one a LoRA run recorded")
    add_thinking_argument(m)
    r = p.add_argument_group("with --task retrieval")
    r.add_argument("--reranker", help="a reranker model or run that reorders each query's top documents")
    r.add_argument("--rerank-top", type=int, default=10, help="documents the reranker reorders (default 10)")
    r.add_argument("--dims", type=int, help="Matryoshka: rank with the first DIMS values of each vector")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval import format_table
    from ..eval.report import read_predictions, score

    source = Path(args.source)
    if not source.exists():
        raise SystemExit(f"eval: {source} does not exist")
    if args.task == "retrieval":
        report = _retrieval(args, source)
    elif args.reranker:
        raise SystemExit("eval: --reranker is for --task retrieval")
    elif source.is_dir():
        if not args.data:
            raise SystemExit(
                f"eval: {source} is a model directory: give the dataset to score it on with --data"
            )
        with tempfile.TemporaryDirectory() as tmp:
            # A fresh file unless asked: `predict` resumes, and stale answers must not be scored.
            preds = Path(args.predictions) if args.predictions else Path(tmp) / "predictions.jsonl"
            report = score(read_predictions(_predict(args, source, preds)), args.task)
    elif args.data or args.thinking is not None or args.reasoning_effort is not None:
        flag = "--data" if args.data else "--thinking" if args.thinking is not None else "--reasoning-effort"
        raise SystemExit(f"eval: {source} is a predictions file; {flag} is only for a model directory")
    else:
        report = score(read_predictions(source), args.task)
    print(format_table(report))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


def _retrieval(args: argparse.Namespace, model: Path) -> dict:
    from ..eval.retrieval import evaluate_retrieval, read_samples
    from ..retrieval import Embedder, Reranker

    if not model.is_dir() or not args.data:
        raise SystemExit("eval --task retrieval: give an embedding model directory and its --data")
    samples = read_samples(args.data)[: args.limit]
    embedder = Embedder.load(model, args.dtype, base=args.base)
    reranker = Reranker.load(args.reranker, args.dtype) if args.reranker else None
    return evaluate_retrieval(samples, embedder, reranker, args.rerank_top, args.dims, args.batch_size)


def _predict(args: argparse.Namespace, model: Path, out: Path) -> Path:
    from ..predict import predict

    predictor = load_predictor(args, str(model))
    return Path(predict(predictor, args.data, str(out), args.max_new_tokens, args.batch_size, args.limit))
