"""Batched generation over a dataset into a JSONL of predictions, resumable.

    qwenvl-ft predict runs/my-run data/eval.jsonl --output preds.jsonl

Each sample's last assistant turn is the reference and everything before it the prompt, rendered
as training renders it. A line per sample: its id, the prediction, the reference text, the
reference boxes in pixels of the original image, and the image sizes (for parsing predicted
boxes back to pixels). On thinking generations the prediction is the answer alone and its
reasoning a separate field, `reasoning` (null when the model gave none). Lines are appended as
batches finish; a rerun skips the ids already written, so an interrupted run continues where it
stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .config import DatasetSpec
from .data.conversation import Conversation
from .data.images import load_image
from .data.prompts import split_reference
from .data.sources import Source
from .infer import Answer, Predictor


def record(predictor: Predictor, conv: Conversation, reference: Conversation, images, answer: Answer) -> dict:
    segs = reference.turns[0].segments
    boxes = [list(s.value.pixels(images[s.value.image].size)) for s in segs if s.kind == "box"]
    thought = {"reasoning": answer.reasoning} if predictor.family.thinking else {}
    return {
        "id": _id(conv),
        "prediction": answer.text,
        **thought,
        "reference": "".join(str(s.value) for s in segs if s.kind in ("text", "ref")),
        "reference_boxes": boxes,
        "image_sizes": [list(im.size) for im in images],
        # What `qwenvl-ft eval` needs to read boxes back into pixels in this generation's convention.
        "family": predictor.family.name,
        "resized_sizes": [list(predictor.processor.resized_size(im.height, im.width)[::-1]) for im in images],
    }


def iter_records(
    predictor: Predictor,
    source: Source,
    indices: list[int],
    batch_size: int,
    max_new_tokens: int,
    synced_gpus: bool = False,
):
    """Prediction records for `source`'s samples at `indices`, a batch at a time.

    synced_gpus: every rank keeps stepping until all are done (ZeRO-3 gathers weights each step).
    """
    for start in range(0, len(indices), batch_size):
        batch = []
        for i in indices[start : start + batch_size]:
            conv = source.conversation(i)
            prompt, ref = split_reference(conv)
            images = [load_image(s.value) for t in conv.turns for s in t.segments if s.kind == "image"]
            batch.append((prompt, ref, images))
        answers = predictor.generate_answers(
            [(p, imgs) for p, _, imgs in batch],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            **({"synced_gpus": True} if synced_gpus else {}),
        )
        yield [record(predictor, p, r, imgs, a) for (p, r, imgs), a in zip(batch, answers, strict=True)]


def predict(
    predictor: Predictor,
    data: str | Path,
    output: str | Path,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Write one JSON line per sample of `data` to `output`, skipping ids already there."""
    source = Source(DatasetSpec(path=str(data)))
    output = Path(output)
    done = set()
    if output.is_file():
        done = {json.loads(line)["id"] for line in output.read_text().splitlines() if line.strip()}
    n = len(source) if limit is None else min(limit, len(source))
    # Only a resumed run reads every sample an extra time, to find the ones already written.
    todo = [i for i in range(n) if _id(source.conversation(i)) not in done] if done else list(range(n))
    with (
        output.open("a", encoding="utf-8") as f,
        tqdm(total=n, initial=n - len(todo), desc="predict", disable=not progress) as bar,
    ):
        for records in iter_records(predictor, source, todo, batch_size, max_new_tokens):
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            f.flush()  # a finished batch survives an interruption
            bar.update(len(records))
    return output


def _id(conv: Conversation) -> str:
    return conv.source_id or conv.id
