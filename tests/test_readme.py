"""The README stays true: its Python blocks run as written from another directory, its CLI lines
parse, and its links stay inside the repository. (How long each CLI line takes is measured by
benchmarks/bench_readme_cli.py, not here.)"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```<language> blocks of a Markdown text, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def cli_lines(text: str) -> list[str]:
    """The ``vqgen ...`` command lines of the README's bash blocks (comments stripped)."""
    lines = (line.split("  #")[0].strip() for block in fenced_blocks(text, "bash")
             for line in block.splitlines())
    return [line for line in lines if line.startswith("vqgen ")]


PY_BLOCKS = fenced_blocks(README, "python")


def test_readme_has_python_blocks_and_cli_lines():
    assert len(PY_BLOCKS) >= 3
    assert {line.split()[1] for line in cli_lines(README)} >= {
        "data", "train", "generate", "encode", "decode", "evaluate", "report"}


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)))
def test_python_block_runs_as_written_from_another_directory(index, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", PY_BLOCKS[index]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README python block {index + 1} failed:\n{proc.stderr[-3000:]}"
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]  # e.g. warmup longer than the run
    assert proc.stdout.strip()  # every block prints what it made
    assert list(tmp_path.iterdir()) == []  # it wrote nothing into the current directory


@pytest.mark.parametrize("line", cli_lines(README))
def test_cli_line_parses(line):
    from vqgen.cli import build_parser
    args, extra = build_parser().parse_known_args(shlex.split(line)[1:])
    assert callable(args.func)
    assert all("=" in e for e in extra)  # only key=value overrides are left over


def test_links_stay_inside_the_repository():
    for target in re.findall(r"\]\(([^)]+)\)", README):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"


def test_warmup_longer_than_training_warns():
    import warnings

    from vqgen.training import TrainConfig
    with pytest.warns(UserWarning, match="warmup_steps=100 >= steps=10"):
        TrainConfig(steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(steps=10, warmup_steps=2)
