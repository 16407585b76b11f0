"""`LocalPredictor`: the learned checkpoint in-process with transformers (extra ``[train]``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roi_agents.errors import InvalidValueError
from roi_agents.predict.head import forecast_from_outputs, input_text, pairs
from roi_agents.types import Forecast, Step

__all__ = ["LocalPredictor"]


class LocalPredictor:
    """The embedded default: a Hugging Face sequence-regression checkpoint, run in-process.

    The same checkpoint a vLLM pooling server serves (`VLLMPredictor`), with the same outputs.

    Args:
        path: the checkpoint folder.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        batch_size: texts per forward pass.

    Raises:
        InvalidValueError: when the folder is not a checkpoint or torch/transformers are missing.
    """

    def __init__(
        self, path: str | Path, *, device: str | None = None, batch_size: int = 64
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
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
        self.model.eval()
        self.batch_size = batch_size
        # Long step texts are cut where the model's positions end, as vLLM cuts them.
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 512))
        self._lock = threading.Lock()

    def outputs(self, texts: Sequence[str]) -> list[list[float]]:
        """Raw head outputs for each text."""
        rows: list[list[float]] = []
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits: Any = self.model(**batch).logits
                rows.extend(logits.float().cpu().tolist())
        return rows

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """One forecast per (step, option), from one batched pass."""
        todo = pairs(steps)
        rows = self.outputs([input_text(s, o) for s, o in todo])
        return [
            forecast_from_outputs(s, o, row, source="local")
            for (s, o), row in zip(todo, rows, strict=True)
        ]

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """`predict` on a worker thread (the forward pass is CPU/GPU work)."""
        return await asyncio.to_thread(self.predict, steps)
