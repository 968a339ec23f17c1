"""`make bench`: every benchmark once at its default settings, one after another (~45 min on 2 CPU cores).

Each writes its JSON to bench/out/; see bench/README.md for what they print and RESULTS.md for numbers.
Pass --quick for the smoke settings (about two minutes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
COMMANDS = (
    ["train_throughput.py", "--tokens-per-step", "4096", "--steps", "4"],
    ["train_vs_plain_loop.py"],
    ["generation.py", "--workload", "eval"],
    ["generation.py", "--workload", "samples"],
    ["data_prep.py", "--rows", "100000"],
    ["end_to_end.py"],
)


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    failed = []
    for command in COMMANDS:
        args = [*command, "--quick"] if quick else command
        print(f"== {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]]).returncode != 0:
            failed.append(args[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
