#!/usr/bin/env python
"""Run and time every ``vqgen`` line of the README's CLI walkthrough, in a fresh folder.

    python benchmarks/bench_readme_cli.py [--keep DIR]

Prints one JSON object per line: ``{"line": ..., "seconds": ..., "returncode": ...}``, then a
summary with the slowest line and the load average before and after (the README promises each
line runs well under a minute on a 2-core CPU). Never part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_readme import README, cli_lines  # noqa: E402 - the same parser the README test uses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temp dir)")
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="readme-cli-"))
    work.mkdir(parents=True, exist_ok=True)
    vqgen = Path(sys.executable).with_name("vqgen")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    load_before = os.getloadavg()
    times = []
    for line in cli_lines(README):
        argv = [str(vqgen), *shlex.split(line)[1:]]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        times.append((seconds, line))
        print(json.dumps({"line": line, "seconds": round(seconds, 1), "returncode": proc.returncode,
                          **({"stderr": proc.stderr[-500:]} if proc.returncode else {})}), flush=True)
        if proc.returncode:
            return 1
    slowest = max(times)
    print(json.dumps({"summary": "readme_cli", "lines": len(times),
                      "total_seconds": round(sum(t for t, _ in times), 1),
                      "slowest_seconds": round(slowest[0], 1), "slowest_line": slowest[1],
                      "cpus": os.cpu_count(), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "folder": str(work)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
