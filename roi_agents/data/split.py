"""Seeded splits that depend on each query's id, not on the file it came in.

A query's side of every split is a hash of the seed and its id (or its dataset), so
``roi-agents train --seed S`` and ``roi-agents bench --seed S`` put the same queries in the test
part whichever files are loaded together: a checkpoint trained with seed ``S`` never saw the
queries the benchmark tests it on with seed ``S``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

__all__ = ["FIT_SHARE", "fine_tuned_on", "split_by", "unit"]

FIT_SHARE = 0.8
"""The share of a training part (by key) that ``roi-agents train`` may fine-tune on; the rest
is its validation (to 0.9) and calibration parts."""

T = TypeVar("T")


def unit(key: str, seed: int, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``(seed, salt, key)``, uniform over keys."""
    digest = hashlib.blake2b(f"{seed}\x00{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by(
    items: Sequence[T],
    key: Callable[[T], str],
    cuts: Sequence[float],
    seed: int,
    salt: str = "",
) -> list[list[T]]:
    """Split ``items`` into ``len(cuts) + 1`` parts at the increasing fractions ``cuts``.

    Items with the same key always land in the same part.

    >>> a = split_by(list("abcdefgh"), str, [0.5], seed=0)
    >>> b = split_by(list("hgfedcba"), str, [0.5], seed=0)
    >>> [sorted(part) for part in a] == [sorted(part) for part in b]
    True
    """
    parts: list[list[T]] = [[] for _ in range(len(cuts) + 1)]
    for item in items:
        u = unit(key(item), seed, salt)
        parts[sum(u >= cut for cut in cuts)].append(item)
    return parts


def fine_tuned_on(
    query_key: str, seed: int, train_fraction: float, by: Literal["query", "dataset"] = "query"
) -> bool:
    """Whether ``roi-agents train`` with this seed, fraction and split may fine-tune on a query.

    ``query_key`` is what the split reads: the query's id (`split_id`), or its dataset with
    ``by="dataset"``. True for the keys of its fit part (a row limit may have left some of them
    out); False for its validation, calibration and test parts, whose outcomes a checkpoint's
    per-step signal never learned from.

    >>> fine_tuned_on("q1", seed=0, train_fraction=0.5) in (True, False)
    True
    """
    return unit(query_key, seed) < train_fraction and unit(query_key, seed, "fit") < FIT_SHARE
