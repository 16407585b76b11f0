"""Imports of optional dependencies, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from roi_agents.errors import MissingExtra

__all__ = ["import_extra", "pyplot"]


def import_extra(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise `MissingExtra` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingExtra(extra, error.name or module) from error


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend (plots are written, never shown)."""
    matplotlib = import_extra("matplotlib", "cli")
    matplotlib.use("Agg")
    return import_extra("matplotlib.pyplot", "cli")
