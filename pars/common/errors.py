"""User-facing errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class PARSError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable hub).

    Command-line entry points print its message as a single line and exit with status 2.
    """


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI `main`, turning PARSError into `error: <message>` on stderr and exit status 2."""
    try:
        status = main(argv)
    except PARSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
