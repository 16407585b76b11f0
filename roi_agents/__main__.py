"""``python -m roi_agents`` and the ``roi-agents`` console script.

The CLI needs the extra ``[cli]``; without it, this says so in one line rather than a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from roi_agents.errors import MissingExtra

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; its exit status (2 when the CLI's extra is not installed)."""
    try:
        from roi_agents.cli import main as cli_main
    except MissingExtra as error:
        print(f"roi-agents: {error}", file=sys.stderr)
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
