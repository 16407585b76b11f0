"""Text read from a file or a trace, made safe to show: no control characters, bounded length."""

from __future__ import annotations

__all__ = ["printable", "shown"]


def printable(text: object, limit: int = 120) -> str:
    r"""``text`` as one printable line: control and format characters escaped, cut at ``limit``.

    Terminal escapes, NULs and bidirectional overrides in a run id reach no terminal or page as
    they are; a 10,000-character id shows its first ``limit`` characters and an ellipsis.

    Example:
        >>> printable("run\x1b[31m-1")
        'run\\x1b[31m-1'
    """
    raw = str(text)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw[: limit + 1])
    return shown[:limit] + "…" if len(shown) > limit else shown


def shown(text: object, limit: int = 120) -> str:
    r"""`printable` with rich's markup escaped, for a console line or a table cell.

    An option named ``o3[high]`` shows as it is, not as ``o3`` styled ``high``.

    Example:
        >>> shown("o3[high]")
        'o3\\[high]'
    """
    from rich.markup import escape

    return escape(printable(text, limit))
