"""The `mailfleet` command: `mailfleet mta` runs the engine, `mailfleet operator` the control plane."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print("usage: mailfleet {mta,operator} ...", file=sys.stderr)
    return 2 if not args else 2


if __name__ == "__main__":
    sys.exit(main())
