"""`VLLMPredictor`: the learned checkpoint behind a vLLM pooling server's ``/classify``.

One batched request per planning turn (one per `batch_size` texts on a big turn). Connection
errors and 5xx answers are retried (tenacity, exponential back-off, bounded); a server that is
down, too slow, or answers with malformed or non-finite outputs makes the predictor fall back
to its fallback predictor (a `PriorPredictor` by default). A fallback is logged, recorded as a
``roi.predictor.fallback`` event on the current span, and kept in `last_fallback`; no bad
forecast ever reaches the controller.

A turn has one deadline in all (``deadline``), read between the bytes of an answer, so a server
that drips its answer cannot hold a turn past it; and a server that failed (down, timed out,
5xx) is not asked again for ``cooldown`` seconds (a circuit breaker): the turns in between fall
back at once, and the first after it probes the server again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from roi_agents.errors import InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.predict.calibration import CALIBRATION_FILE, Calibration
from roi_agents.predict.head import forecasts, input_text, pairs
from roi_agents.predict.prior import PriorPredictor
from roi_agents.telemetry import names
from roi_agents.types import Forecast, Step

__all__ = ["VLLMPredictor"]

logger = logging.getLogger("roi_agents.predict")


class _Unavailable(RuntimeError):
    """The circuit is open: the server failed a moment ago."""


# What makes a turn fall back: HTTP and transport errors, and an answer of the wrong shape
# (ValueError: bad JSON, InvalidValueError; TypeError / OverflowError: values that are no
# numbers, or too large for one).
_FAILURES = (httpx.HTTPError, ValueError, TypeError, OverflowError)


def _retryable(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code >= 500


class VLLMPredictor:
    """Forecasts from a vLLM server running the checkpoint with ``--runner pooling``.

    Args:
        base_url: the server's root, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is
            accepted and dropped: ``/classify`` lives at the root).
        model: the served model name.
        fallback: used when the server fails (default: an empty `PriorPredictor`).
        timeout: seconds per request.
        attempts: tries per turn for connection errors and 5xx answers.
        client: an httpx client to use (and to close yourself).
        async_client: an httpx async client to use (and to close yourself).
        calibration: the checkpoint's `Calibration`, or the checkpoint folder holding its
            ``calibration.json`` (the server returns raw outputs; the maps apply here, and its
            ``labels`` say which outputs are each option's own). Without it, a checkpoint with
            outputs per option (what ``roi-agents train`` writes) cannot be read, and every
            turn falls back.
        batch_size: texts per request: a turn with more sends several requests, in turn, so
            that each stays within ``timeout``.
        deadline: seconds a whole turn may take, retries included (default: ``timeout`` times
            ``attempts``).
        cooldown: seconds the server is left alone after it failed.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        fallback: Predictor | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        calibration: Calibration | str | Path | None = None,
        batch_size: int = 128,
        deadline: float | None = None,
        cooldown: float = 30.0,
    ) -> None:
        if attempts < 1:
            raise InvalidValueError("attempts", f"must be >= 1, got {attempts}")
        if batch_size < 1:
            raise InvalidValueError("batch_size", f"must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        root = base_url.rstrip("/")
        self.url = (root.removesuffix("/v1")) + "/classify"
        self.model = model
        self.fallback = fallback or PriorPredictor()
        self.timeout = timeout
        self.attempts = attempts
        self.deadline = deadline if deadline is not None else timeout * attempts
        if not self.deadline > 0 or not cooldown >= 0:
            raise InvalidValueError("deadline", "deadline must be > 0 and cooldown >= 0 seconds")
        self.cooldown = cooldown
        self._open_until = 0.0
        self._client = client
        self._async_client = async_client
        self.last_fallback: str | None = None
        if isinstance(calibration, str | Path):
            loaded = Calibration.load(calibration)
            if loaded is None:
                msg = f"no {CALIBRATION_FILE} in {calibration}"
                raise InvalidValueError("calibration", msg)
            calibration = loaded
        self.calibration = calibration

    def _retrying(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.attempts),
            "wait": wait_exponential(multiplier=0.1, max=2.0),
            "retry": retry_if_exception(_retryable),
            "reraise": True,
        }

    def _request(self, texts: list[str]) -> dict[str, Any]:
        # -1: cut each text at the server's max_model_len, as LocalPredictor cuts at the model's.
        return {"model": self.model, "input": texts, "truncate_prompt_tokens": -1}

    def _chunks(self, steps: Sequence[Step]) -> list[list[str]]:
        texts = [input_text(s, o) for s, o in pairs(steps)]
        return [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    @staticmethod
    def _rows(payload: Any, expected: int) -> list[list[float]]:
        """The answer's rows, each a list of finite numbers, or `InvalidValueError`."""
        try:
            rows = [item["probs"] for item in payload["data"]]
        except (KeyError, TypeError) as error:
            raise InvalidValueError("response", f"malformed /classify answer: {error!r}") from None
        if len(rows) != expected:
            msg = f"{len(rows)} outputs for {expected} inputs"
            raise InvalidValueError("response", msg)
        for row in rows:
            if not isinstance(row, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in row
            ):
                raise InvalidValueError("response", f"a row is not finite numbers: {row!r:.200}")
        return rows

    def _open(self, steps: Sequence[Step]) -> list[Forecast] | None:
        """The fallback's forecasts while the circuit is open, else None."""
        left = self._open_until - time.monotonic()
        if left <= 0:
            return None
        return self._fall_back(steps, _Unavailable(f"the server failed; next try in {left:.0f} s"))

    def _trip(self, error: BaseException) -> None:
        if isinstance(error, httpx.TransportError | httpx.HTTPStatusError):
            self._open_until = time.monotonic() + self.cooldown

    def _check_time(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpx.ReadTimeout(f"the turn's deadline of {self.deadline:g} s passed")
        return min(self.timeout, left)

    def _post(self, client: httpx.Client, chunk: list[str], deadline: float) -> Any:
        timeout = self._check_time(deadline)
        body = bytearray()
        with client.stream("POST", self.url, json=self._request(chunk), timeout=timeout) as answer:
            answer.raise_for_status()
            for part in answer.iter_bytes():
                body += part
                self._check_time(deadline)
        return json.loads(body)

    async def _apost(self, client: httpx.AsyncClient, chunk: list[str], deadline: float) -> Any:
        timeout = self._check_time(deadline)
        body = bytearray()
        request = client.stream("POST", self.url, json=self._request(chunk), timeout=timeout)
        async with request as answer:
            answer.raise_for_status()
            async for part in answer.aiter_bytes():
                body += part
                self._check_time(deadline)
        return json.loads(body)

    def _forecasts(self, steps: Sequence[Step], rows: list[Any]) -> list[Forecast]:
        return forecasts(steps, rows, source="vllm", calibration=self.calibration)

    def _fall_back(self, steps: Sequence[Step], error: BaseException) -> list[Forecast]:
        reason = f"{type(error).__name__}: {error}"[:300]
        self.last_fallback = reason
        logger.warning("VLLMPredictor falls back to %s: %s", type(self.fallback).__name__, reason)
        trace.get_current_span().add_event(
            names.EVENT_FALLBACK, {names.EVENT_REASON: reason, "roi.predictor": "vllm"}
        )
        return self.fallback.predict(steps)

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """Batched ``/classify`` requests; the fallback's forecasts if any fails."""
        chunks = self._chunks(steps)
        if not chunks:
            return []
        opened = self._open(steps)
        if opened is not None:
            return opened
        deadline = time.monotonic() + self.deadline
        client = self._client or httpx.Client(timeout=self.timeout)
        try:
            rows: list[Any] = []
            for chunk in chunks:
                for attempt in Retrying(**self._retrying()):
                    with attempt:
                        payload = self._post(client, chunk, deadline)
                rows.extend(self._rows(payload, len(chunk)))
            forecasts = self._forecasts(steps, rows)
        except _FAILURES as error:
            self._trip(error)
            return self._fall_back(steps, error)
        finally:
            if self._client is None:
                client.close()
        self.last_fallback = None
        self._open_until = 0.0
        return forecasts

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """Async `predict`: real async I/O with httpx."""
        chunks = self._chunks(steps)
        if not chunks:
            return []
        opened = self._open(steps)
        if opened is not None:
            return opened
        deadline = time.monotonic() + self.deadline
        client = self._async_client or httpx.AsyncClient(timeout=self.timeout)
        try:
            rows: list[Any] = []
            for chunk in chunks:
                async for attempt in AsyncRetrying(**self._retrying()):
                    with attempt:
                        payload = await self._apost(client, chunk, deadline)
                rows.extend(self._rows(payload, len(chunk)))
            forecasts = self._forecasts(steps, rows)
        except _FAILURES as error:
            self._trip(error)
            return self._fall_back(steps, error)
        finally:
            if self._async_client is None:
                await client.aclose()
        self.last_fallback = None
        self._open_until = 0.0
        return forecasts
