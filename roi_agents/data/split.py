"""Seeded splits that depend on each query's id, not on the file it came in.

A query's side of every split is a hash of the seed and its id (or its dataset), so
``roi-agents train --seed S`` and ``roi-agents bench --seed S`` put the same queries in the test
part whichever files are loaded together: a checkpoint trained with seed ``S`` never saw the
queries the benchmark tests it on with seed ``S``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["split_by", "unit"]

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
