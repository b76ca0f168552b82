"""Convert retrieval data to qwenvl-ft's JSONL (README 'Retrieval'): one query / positive / negatives
sample per line.

    python data_tools/convert_retrieval.py beir DATASET_DIR --split test --out eval.jsonl [--negatives 7]
    python data_tools/convert_retrieval.py flag FILE.jsonl --out train.jsonl

- beir: a BEIR / MTEB retrieval folder, `corpus.jsonl` ({"_id", "title", "text"}, or an "image" path
  for visual-document sets), `queries.jsonl` ({"_id", "text"}) and `qrels/SPLIT.tsv` (query-id,
  corpus-id, score, with a header row). Each (query, document) with score > 0 becomes one sample,
  its document the positive ("title\\ntext" when it has a title); --negatives N adds N documents drawn
  at random (seeded) from the corpus among those not relevant to the query.
- flag: FlagEmbedding lines ({"query", "pos": [...], "neg": [...]}, optional "prompt"): one sample
  per positive, the line's negatives with each; "prompt" becomes the instruction.

Ids are kept ("q12/d7", or "line#k") so an error from `qwenvl-ft data check` names the source.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path


def beir_samples(folder: Path, split: str, negatives: int = 0, seed: int = 0) -> Iterator[dict]:
    corpus = {d["_id"]: _document(d, folder) for d in _jsonl(folder / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in _jsonl(folder / "queries.jsonl")}
    qrels_file = folder / "qrels" / f"{split}.tsv"
    relevant: dict[str, list[str]] = {}
    with open(qrels_file, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows, None)  # the header
        for k, row in enumerate(rows, start=2):
            if len(row) < 3:
                raise ValueError(f"{qrels_file}:{k}: expected query-id, corpus-id, score")
            qid, did, score = row[0], row[1], float(row[2])
            if score > 0:
                relevant.setdefault(qid, []).append(did)
    rng = random.Random(seed)
    ids = list(corpus)
    for qid, docs in relevant.items():
        if qid not in queries:
            raise ValueError(f"{qrels_file}: query {qid!r} is not in queries.jsonl")
        for did in docs:
            if did not in corpus:
                raise ValueError(f"{qrels_file}: document {did!r} is not in corpus.jsonl")
            sample = {"id": f"{qid}/{did}", "query": queries[qid], "positive": corpus[did]}
            if negatives:
                drawn: list[str] = []
                excluded = set(docs)
                while len(drawn) < min(negatives, len(ids) - len(excluded)):
                    d = rng.choice(ids)  # rejection sampling: a million-document corpus is never copied
                    if d not in excluded:
                        excluded.add(d)
                        drawn.append(d)
                sample["negatives"] = [corpus[d] for d in drawn]
            yield sample


def flag_samples(path: Path) -> Iterator[dict]:
    for k, line in enumerate(_jsonl(path), start=1):
        positives = line["pos"] if isinstance(line["pos"], list) else [line["pos"]]
        for j, pos in enumerate(positives):
            sample = {"id": f"{line.get('id', k)}#{j}", "query": line["query"], "positive": pos}
            if line.get("neg"):
                sample["negatives"] = list(line["neg"])
            if line.get("prompt"):
                sample["instruction"] = line["prompt"]
            yield sample


def _document(d: dict, folder: Path) -> str | dict:
    text = "\n".join(t for t in (d.get("title"), d.get("text")) if t)
    if "image" in d:
        return {"image": str(folder / d["image"]), **({"text": text} if text else {})}
    return text


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{k}: not valid JSON: {e}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=["beir", "flag"])
    p.add_argument("source", help="BEIR folder, or FlagEmbedding JSONL file")
    p.add_argument("--out", required=True, help="the JSONL to write")
    p.add_argument("--split", default="test", help="beir: the qrels split (default test)")
    p.add_argument("--negatives", type=int, default=0, help="beir: random negatives per sample (default 0)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    source = Path(args.source)
    try:
        samples = (
            beir_samples(source, args.split, args.negatives, args.seed)
            if args.layout == "beir"
            else flag_samples(source)
        )
        count = 0
        with open(args.out, "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
                count += 1
    except (OSError, ValueError, KeyError) as e:
        print(f"convert_retrieval: {e}", file=sys.stderr)
        return 1
    print(f"wrote {count} samples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
