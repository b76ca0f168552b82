"""Task metrics on the held-out set during training (recipe section `eval`).

At every evaluation the model in training generates answers for the first `eval.limit` samples
of `data.eval`, rendered exactly as `qwenvl-ft predict` renders them, and the answers are scored
by `qwenvl_ft.eval` (grounding for samples with boxes, `eval.task` for the others). The scores
join the eval loss in the logs (`eval_grounding.acc@0.5`, ...), and `eval.best_metric` can pick
the checkpoint to keep.
"""

from __future__ import annotations

import torch

from ..config import EvalConfig
from ..data.sources import Source
from ..eval.report import score
from ..infer import Predictor
from ..models.base import ModelFamily
from ..models.processor import VLProcessor
from ..predict import iter_records


class TaskEval:
    def __init__(
        self,
        cfg: EvalConfig,
        sources: list[Source],
        processor: VLProcessor,
        family: ModelFamily,
        thinking: bool | None = None,
    ):
        """thinking: the prompts' thinking mode (thinking generations), the one the run trains in, as
        `qwenvl-ft eval` will ask the finished run (README 'Thinking at inference')."""
        self.cfg, self.processor, self.family, self.thinking = cfg, processor, family, thinking
        # The first `limit` samples across the eval sources, as (source, indices) pairs.
        self.samples: list[tuple[Source, list[int]]] = []
        left = cfg.limit if cfg.limit is not None else sum(len(s) for s in sources)
        for source in sources:
            take = min(left, len(source))
            if take:
                self.samples.append((source, list(range(take))))
            left -= take

    def __call__(self, model: torch.nn.Module, synced_gpus: bool = False) -> dict[str, float]:
        """Flat scores, e.g. {"grounding.acc@0.5": 0.4, "vqa.accuracy": 0.7}; the model is left as it was."""
        was_training = model.training
        model.eval()
        predictor = Predictor(model, self.processor, self.family, self.thinking)
        records = []
        try:
            for source, indices in self.samples:
                for batch in iter_records(
                    predictor, source, indices, self.cfg.batch_size, self.cfg.max_new_tokens, synced_gpus
                ):
                    records += batch
        finally:
            model.train(was_training)
        report = score(records, self.cfg.task)
        return {
            f"{task}.{name}": float(v)
            for task, metrics in report.items()
            for name, v in metrics.items()
            if name != "n"
        }
