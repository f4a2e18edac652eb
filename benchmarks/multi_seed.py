"""The table of a study kept in git (several seeds of several methods on the same questions),
recomputed from its compact files: every figure of ``benchmarks/results/multi_seed.json``.

    python benchmarks/multi_seed.py table --root benchmarks/results/multi_seed \
        --methods lmsi format_only star --seeds 0 1 2 --json benchmarks/results/multi_seed.json

Studies run through DVC's experiment queue: ``selfimprove study run`` (docs/studies.md), which
also writes ``<root>/<method>_s<seed>/`` and the table. This script is the table alone
(``selfimprove study table --root ...`` is the same): per method the round's accuracy averaged
over seeds with a 95% interval (bootstrap over seeds and questions), each method minus the first
with a paired interval (same questions), round r0 (the no-training control), the stop-rule and
label-free-selection analysis and the collapse monitors
(:mod:`selfimprove.evaluation.study_table`). Markdown on stdout, the JSON in ``--json``.
"""

from __future__ import annotations

import argparse
import sys

from selfimprove.cli import main as selfimprove_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["table", "run"])
    args, rest = ap.parse_known_args(argv)
    if args.action == "run":  # the clone-per-run runner this script had
        print("error: studies run through DVC's experiment queue now: `selfimprove study run "
              "--methods ... --seeds ... --jobs 2` (docs/studies.md)", file=sys.stderr)
        return 2
    return selfimprove_main(["study", "table", *rest])


if __name__ == "__main__":
    sys.exit(main())
