"""`LocalPredictor`: the learned checkpoint in-process with transformers (extra ``[train]``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from roi_agents.errors import InvalidValueError
from roi_agents.predict.calibration import Calibration
from roi_agents.predict.head import HEAD_LABELS, forecasts, input_text, pairs
from roi_agents.types import Forecast, Step

__all__ = ["LocalPredictor"]


class LocalPredictor:
    """The embedded default: a Hugging Face sequence-regression checkpoint, run in-process.

    The same checkpoint a vLLM pooling server serves (`VLLMPredictor`), with the same outputs.
    The checkpoint's ``calibration.json`` (written by ``roi-agents train``) is applied when
    present.

    Args:
        path: the checkpoint folder.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        batch_size: texts per forward pass.
        calibrated: apply the stored calibration (``False``: raw head outputs).

    Raises:
        InvalidValueError: when the folder is not a checkpoint or torch/transformers are missing.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | None = None,
        batch_size: int = 64,
        calibrated: bool = True,
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from roi_agents.predict.pooling import asks_for_mean, mean_pool
        except ImportError as error:
            msg = "LocalPredictor needs the [train] extra: pip install roi-agents[train]"
            raise InvalidValueError("path", msg) from error
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise InvalidValueError("path", f"{self.path} is not a checkpoint folder")
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device)
        if asks_for_mean(self.path):
            mean_pool(self.model)
        self.model.eval()
        self.batch_size = batch_size
        # Long step texts are cut where the model's positions end, as vLLM cuts them.
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 512))
        self._lock = threading.Lock()
        self.calibration = Calibration.load(self.path) if calibrated else None
        config = self.model.config
        labels = tuple(config.id2label[i] for i in range(config.num_labels))
        # The head's labels, when it is one `roi-agents train` made (`own_row` reads them).
        self.labels = labels if labels[0] == HEAD_LABELS[0] else ()

    def outputs(
        self, texts: Sequence[str], *, progress: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """Raw head outputs for each text (batched by length; ``progress`` gets rows done)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[list[float]] = [[] for _ in texts]
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits: Any = self.model(**batch).logits
                for i, row in zip(chunk, logits.float().cpu().tolist(), strict=True):
                    rows[i] = row
                if progress is not None:
                    progress(len(chunk))
        return rows

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """One forecast per (step, option), from one batched pass."""
        rows = self.outputs([input_text(s, o) for s, o in pairs(steps)])
        return forecasts(
            steps, rows, source="local", calibration=self.calibration, labels=self.labels
        )

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """`predict` on a worker thread (the forward pass is CPU/GPU work)."""
        return await asyncio.to_thread(self.predict, steps)
