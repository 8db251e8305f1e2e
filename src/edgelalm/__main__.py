"""`edgelalm` (the console script) and `python -m edgelalm`: the CLI. Its imports take a fraction
of a second, before the CLI's own signal handling is in place: Ctrl-C there is one line too."""

from __future__ import annotations

import sys

from edgelalm.interrupts import INTERRUPTED_LINE


def main() -> None:
    try:
        from edgelalm.cli import program
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED_LINE)
        sys.exit(130)
    program()


if __name__ == "__main__":
    main()
