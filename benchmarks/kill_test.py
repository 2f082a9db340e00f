"""Repeated ``kill -9`` during tokenizer and prior training through the ``vqgen`` CLI.

For each stage (tokenizer, then a PixelCNN prior on its codes) the script trains an uninterrupted
reference run, then trains the same command in a second run directory, killing the process with
SIGKILL again and again and restarting it, until it finishes. Half of the kills come at a random
moment in the expected lifetime of the process, half as soon as a temporary file of a write shows
up (so they land inside checkpoint writes; ``--slow-writes`` makes each file pause briefly after
its first chunk, a slow disk, so that they do). Each run is ``vqgen.cli.main(argv)`` in a forked child
of this script: torch is imported once, so a restart costs no interpreter start-up, and the kill
is a real SIGKILL of that child process. After every kill it checks:

- corrupt files: the export dir (``from_pretrained``: checksum, recovery of a half-done swap)
  and the train state (``weights_only`` load + checksum) must load when present;
- consistency: the export never holds a later step than the train state;
- leaks: temporary files left by the kill must be gone once the next process has started.

At the end the killed runs must equal the references bit for bit (every tensor of the export
and of the train state's model) with the same per-step training losses in the JSONL log.
Prints one JSON object per line (per kill, then a summary); exits 1 if any check failed.

    python benchmarks/kill_test.py --kills 30            # about 5 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"       # before torch: one thread, so forking is safe
os.environ["TQDM_DISABLE"] = "1"
import torch  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOG_DIR = Path("/tmp")                    # where children's stderr goes (set in main)

from vqgen.cli import main as cli_main  # noqa: E402
from vqgen.modeling import read_train_step, read_weights  # noqa: E402
from vqgen.pipeline import load_model  # noqa: E402
from vqgen.training import _load_state  # noqa: E402


def temps(run: Path) -> set[Path]:
    """Temporary files/dirs of interrupted writes anywhere in ``run``."""
    return {p for p in run.rglob("*") if p.name.endswith((".tmp", ".new")) or ".old-" in p.name}


def command(stage: str, run: Path, data: Path, steps: int, every: int) -> list[str]:
    """``vqgen`` CLI arguments of one training stage."""
    common = ["--dataset", "digits", "--root", str(data), "--limit", "256", "--batch-size", "32",
              "--steps", str(steps), "--checkpoint-every", str(every), "--seed", "0"]
    if stage == "tokenizer":
        return ["train", "tokenizer", "--run-dir", str(run), "--preset", "image_tokenizer_debug",
                *common]
    return ["train", "prior", str(run), "--prior", "pixelcnn", *common, "hidden=16", "num_layers=2"]


SLOW_WRITES = 0.0                         # seconds of sleep per write() in children (main sets it)


def slow_down_writes(seconds: float) -> None:
    """A slow disk: each file vqgen's atomic writers write pauses ``seconds`` after its first
    chunk, so checkpoint writes last long enough for kills to land inside them (timing only;
    the bytes are unchanged)."""
    import io

    import vqgen.atomic as atomic

    class SlowFile(io.FileIO):
        paused = False

        def write(self, data):
            n = super().write(data)
            if not self.paused:      # once per file, after its first chunk
                self.paused = True
                time.sleep(seconds)
            return n
    atomic._open_for_write = lambda path: SlowFile(path, "wb")


class Child:
    """``vqgen <argv>`` in a forked child of this process (which has torch imported already, so
    a start costs no interpreter start-up); the parent kills it with a real SIGKILL."""

    count = 0

    def __init__(self, argv: list[str], log_dir: Path):
        Child.count += 1
        self.log = log_dir / f"child-{Child.count}.stderr"
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:                      # the child: run the CLI, never return
            code = 1
            try:
                fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                if SLOW_WRITES:
                    slow_down_writes(SLOW_WRITES)
                code = cli_main(argv)
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.01)
        return self.returncode

    def stderr_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""


def start(argv: list[str]) -> Child:
    return Child(argv, LOG_DIR)


def reference(stage: str, run: Path, data: Path, steps: int, every: int) -> tuple[float, float]:
    """Train uninterrupted; returns (seconds to the first checkpoint, total seconds)."""
    t0 = time.perf_counter()
    proc, first = start(command(stage, run, data, steps, every)), None
    while proc.poll() is None:
        if first is None and (run / f"train_state_{stage}.pt").exists():
            first = time.perf_counter() - t0
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"reference {stage} run failed: {proc.stderr_tail()}")
    return first or 0.0, time.perf_counter() - t0


def check(stage: str, run: Path) -> dict:
    """Load what a kill left behind (without repairing anything); returns what was found."""
    out = {"corrupt": 0, "export_ahead": 0, "interrupted_swap": 0, "state_step": None,
           "export_step": None}
    state_path = run / f"train_state_{stage}.pt"
    try:
        state = _load_state(state_path)
        out["state_step"] = None if state is None else state["step"]
    except ValueError as e:
        out["corrupt"] += 1
        out["error"] = str(e)
    if not (run / stage).exists():   # killed between the two renames of a swap: the next
        out["interrupted_swap"] = int(any(run.glob(f"{stage}.old-*"))   # start restores it
                                      or any(run.glob(f".{stage}.*.new")))
    else:
        try:
            load_model(run / stage)
            out["export_step"] = read_train_step(run / stage)
        except (ValueError, FileNotFoundError) as e:
            out["corrupt"] += 1
            out["error"] = str(e)
    if out["export_step"] is not None and (out["state_step"] is None
                                           or out["export_step"] > out["state_step"]):
        out["export_ahead"] = 1
    return out


def reset(run: Path, stage: str) -> None:
    """Remove what a previous round of ``stage`` left in ``run`` (the tokenizer round keeps
    nothing; a prior round keeps the finished tokenizer)."""
    import shutil
    if stage == "tokenizer":
        shutil.rmtree(run, ignore_errors=True)
        return
    for path in [run / "prior", run / "train_state_prior.pt", run / "logs" / "prior.jsonl"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(run: Path, stage: str) -> list[tuple[int, float]]:
    lines = (run / "logs" / f"{stage}.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if not r.get("eval")]


def state_step(run: Path, stage: str) -> int:
    with contextlib.suppress(ValueError, TypeError):
        return (_load_state(run / f"train_state_{stage}.pt") or {}).get("step", 0)
    return 0


def kill_loop(stage: str, run: Path, data: Path, steps: int, every: int, kills: int,
              first: float, step_seconds: float, rng: random.Random) -> dict:
    """Kill a fresh process at a random moment between half its start-up time (to its first
    checkpoint) and a quarter of its remaining training, or (``hunt``) inside its first write."""
    stats = {"kills": 0, "kills_in_writes": 0, "leaked_after_next_start": 0, "corrupt": 0,
             "export_ahead": 0, "interrupted_swaps": 0, "restarts_refused": 0, "starts": 0}
    pending: set[Path] = set()       # temps a kill left; must vanish once the next run starts
    while True:
        proc = start(command(stage, run, data, steps, every))
        stats["starts"] += 1
        hunt = stats["kills"] < kills and rng.random() < 0.5
        remaining = (steps - state_step(run, stage)) * step_seconds
        delay = rng.uniform(0.5 * first, first + 0.25 * remaining)
        deadline = time.perf_counter() + (delay if stats["kills"] < kills else 1e9)
        started_at, killed, stale = time.perf_counter(), False, set(pending)
        while proc.poll() is None:
            now = time.perf_counter()
            if pending and now - started_at > first:   # the new process is past its start
                stats["leaked_after_next_start"] += len(pending & temps(run))
                pending = set()
            if stats["kills"] < kills and (now >= deadline or (hunt and now - started_at > 0.5 * first
                                                               and temps(run) - stale)):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            time.sleep(0.005 if hunt else 0.02)
        if not killed:
            if proc.returncode != 0:
                stats["restarts_refused"] += 1
                stats["last_error"] = proc.stderr_tail()[-500:]
                return stats
            if pending:
                stats["leaked_after_next_start"] += len(pending & temps(run))
            return stats
        stats["kills"] += 1
        left = temps(run)
        stats["kills_in_writes"] += bool(left)
        result = check(stage, run)
        stats["corrupt"] += result["corrupt"]
        stats["export_ahead"] += result["export_ahead"]
        stats["interrupted_swaps"] += result["interrupted_swap"]
        pending = left
        print(json.dumps({"stage": stage, "kill": stats["kills"], "hunt": hunt,
                          "temps_left": len(left), **result}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=30, help="total kills, split over the two stages")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/vqgen-kill-test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-writes", type=float, default=0.1,
                   help="seconds each written file pauses after its first chunk (0: off)")
    args = p.parse_args()
    global SLOW_WRITES
    SLOW_WRITES = args.slow_writes
    work, rng = Path(args.workdir), random.Random(args.seed)
    if work.exists():
        import shutil
        shutil.rmtree(work)
    data, ref, killed = work / "data", work / "ref", work / "killed"
    t_start = time.perf_counter()
    summary = {"kills": 0, "kills_in_writes": 0, "corrupt": 0, "leaked_after_next_start": 0,
               "export_ahead": 0, "interrupted_swaps": 0, "restarts_refused": 0, "starts": 0,
               "identical": True, "rounds": 0}
    stage_kills: dict[str, int] = {}
    global LOG_DIR  # noqa: PLW0603
    LOG_DIR = work / "logs"
    LOG_DIR.mkdir(parents=True)
    if start(["data", "prepare", "digits", "--root", str(data)]).wait() != 0:
        raise SystemExit("cannot prepare the digits dataset")
    for i, stage in enumerate(("tokenizer", "prior")):
        first, total = reference(stage, ref, data, args.steps, args.checkpoint_every)
        step_seconds = (total - first) / max(1, args.steps - args.checkpoint_every)
        target, rounds = args.kills // 2 + (args.kills % 2 if i == 1 else 0), 0
        while stage_kills.get(stage, 0) < target and rounds < 5:
            rounds += 1
            reset(killed, stage)   # a round that finished short of kills is trained again
            stats = kill_loop(stage, killed, data, args.steps, args.checkpoint_every,
                              target - stage_kills.get(stage, 0), first, step_seconds, rng)
            stage_kills[stage] = stage_kills.get(stage, 0) + stats["kills"]
            final = check(stage, killed)
            try:
                identical = (
                    same_tensors(read_weights(ref / stage / "model.safetensors"),
                                 read_weights(killed / stage / "model.safetensors"))
                    and same_tensors(_load_state(ref / f"train_state_{stage}.pt")["model"],
                                     _load_state(killed / f"train_state_{stage}.pt")["model"])
                    and losses(ref, stage) == losses(killed, stage))
            except (OSError, ValueError, KeyError, TypeError):   # the run did not finish
                identical = False
            leftover = len(temps(killed))
            row = {"stage": stage, "round": rounds, **stats, "final_state_step": final["state_step"],
                   "final_export_step": final["export_step"], "temps_at_end": leftover,
                   "identical_to_uninterrupted": identical, "reference_seconds": round(total, 1),
                   "reference_seconds_to_first_checkpoint": round(first, 1)}
            print(json.dumps(row), flush=True)
            for key in ("kills", "kills_in_writes", "corrupt", "leaked_after_next_start",
                        "export_ahead", "interrupted_swaps", "restarts_refused", "starts"):
                summary[key] += stats[key]
            summary["leaked_after_next_start"] += leftover
            summary["identical"] &= identical and final["state_step"] == final["export_step"] == args.steps
            summary["rounds"] += 1
            if stage_kills[stage] >= target or stats["restarts_refused"]:
                break
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps({"summary": True, **summary}), flush=True)
    ok = (summary["identical"] and summary["corrupt"] == 0 and summary["leaked_after_next_start"] == 0
          and summary["export_ahead"] == 0 and summary["restarts_refused"] == 0
          and summary["kills"] >= args.kills)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
