"""One-off: replace the per-question predictions kept in benchmarks/results by the
compact per-question scores (``<round>/question_scores.json``,
:mod:`selfimprove.evaluation.question_scores`).

    python benchmarks/convert_question_scores.py benchmarks/results        # writes, checks
    git rm -r -q benchmarks/results/**/eval benchmarks/results/**/rationales.jsonl ...

Every round folder with an ``eval/`` folder gets its question_scores.json (each metric's mean
checked against its metrics.json); the study folders' collapse monitors already sit in
``data/report/monitors.csv``, which the study table reads once rationales.jsonl and the training
labels are gone. Prints the files the compact ones replace (to ``git rm``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfimprove.evaluation.headline import read_round_scores
from selfimprove.evaluation.question_scores import compact_round, write_question_scores


def main(argv: list[str] | None = None) -> int:
    roots = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or [
        Path("benchmarks/results")]
    for root in roots:
        for eval_dir in sorted(root.rglob("eval")):
            round_dir = eval_dir.parent
            content = compact_round(round_dir, read_round_scores(round_dir))
            write_question_scores(round_dir, content)
            print(eval_dir)
        for name in ("rationales.jsonl", "train_labels.jsonl"):
            for path in sorted(root.rglob(name)):
                print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
