"""Wall time of `dvc repro`, per stage: runs it, timestamps each "Running stage" line, prints JSON.

    python benchmarks/repro_timing.py            # the default pipeline
    python benchmarks/repro_timing.py -- --force # extra args go to `dvc repro`

The last line of stdout is one JSON object: {"total_s": …, "stages": {"data": …, …}}.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

_STAGE = re.compile(r"Running stage '([^']+)'")


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else argv
    cmd = [sys.executable, "-m", "dvc", "repro", *extra]
    t0 = last = time.perf_counter()
    current, stages = None, {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        m = _STAGE.search(line)
        if m:
            now = time.perf_counter()
            if current:
                stages[current] = round(now - last, 1)
            current, last = m.group(1), now
    rc = proc.wait()
    end = time.perf_counter()
    if current:
        stages[current] = round(end - last, 1)
    print(
        json.dumps(
            {"cmd": " ".join(cmd[1:]), "rc": rc, "total_s": round(end - t0, 1), "stages": stages}
        )
    )
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
