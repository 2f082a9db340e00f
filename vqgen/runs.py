"""Run directories: one writer at a time, recovery on start, user mistakes as one line.

Shared by the CLI, the training loop and every recipe:

- :func:`run_lock` / :func:`acquire_run_lock`: an OS lock (``flock`` on ``<run_dir>/.vqgen.lock``)
  held while a process trains in a run directory. The kernel drops it when the process exits,
  also on ``kill -9``. A second writer fails at once with :class:`RunLockedError` naming the
  holder's pid and host. Taking the lock also restores directories an interrupted save left
  missing and deletes dead writers' temporary files (:mod:`vqgen.atomic`).
- :func:`start_run`: what a recipe does before its first step: check the config, lock the run
  dir, write ``config.yaml``. If the recipe then fails before any checkpoint exists,
  :func:`run_main` removes that ``config.yaml`` again, so a failed start leaves nothing behind.
- :func:`user_error_message` / :func:`run_main`: turn user mistakes (``ValueError``,
  ``FileNotFoundError``, a diverged run, a full disk, a read-only directory, ...) into one line
  on stderr and exit status 2. Anything else is a bug: it keeps its traceback (exit 1).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .atomic import file_lock, recover_and_clean, remove_stale_temps

LOCK_NAME = ".vqgen.lock"
CONFIG_FILE = "config.yaml"

_held: dict[str, list[Any]] = {}          # realpath -> [ExitStack holding the flock, depth]
_started: list[tuple[Path, bool]] = []    # runs opened by start_run: (run_dir, existed before)


class RunLockedError(ValueError):
    """Another process holds the run directory's lock."""


# --------------------------------------------------------------------------- locking
def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a Path; ``ValueError`` if it exists and is not a directory."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"expected a run directory at {run_dir}, found a file")
    return run_dir


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if text:
            return text
    return "another process"


def acquire_run_lock(run_dir: str | os.PathLike) -> Path:
    """Lock ``run_dir`` (created if missing) for this process; re-entrant within a process.

    On first acquisition restores directories left missing by an interrupted save and removes
    stale temporaries in ``run_dir`` and its direct subfolders. Raises :class:`RunLockedError`
    at once if another process holds the lock, ``ValueError`` if ``run_dir`` is a file, and
    ``OSError`` if it cannot be created (read-only, permissions, full disk).
    """
    run_dir = check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key in _held:
        _held[key][1] += 1
        return run_dir
    stack = contextlib.ExitStack()
    lock_path = run_dir / LOCK_NAME
    try:
        fd = stack.enter_context(file_lock(lock_path, blocking=False))
    except BlockingIOError:
        raise RunLockedError(f"run directory {run_dir} is in use by {_holder(lock_path)}; wait for "
                             f"that run to finish or choose another run directory") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        recover_and_clean(run_dir)      # we are the only writer now: leftovers are stale
        for sub in run_dir.iterdir():
            if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."):
                remove_stale_temps(sub)
    except BaseException:
        stack.close()
        raise
    _held[key] = [stack, 1]
    return run_dir


def release_run_lock(run_dir: str | os.PathLike) -> None:
    """Undo one :func:`acquire_run_lock`; the lock goes when the depth reaches 0."""
    key = os.path.realpath(run_dir)
    if key in _held:
        _held[key][1] -= 1
        if _held[key][1] <= 0:
            _held.pop(key)[0].close()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the block (see :func:`acquire_run_lock`)."""
    path = acquire_run_lock(run_dir)
    try:
        yield path
    finally:
        release_run_lock(run_dir)


def _is_main_process() -> bool:
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def locks_run_dir(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: hold the lock of ``fn``'s ``run_dir`` argument while ``fn`` runs (on the main
    process; other DDP ranks do not write)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _is_main_process():
            return fn(*args, **kwargs)
        with run_lock(signature.bind(*args, **kwargs).arguments["run_dir"]):
            return fn(*args, **kwargs)
    return wrapper


# --------------------------------------------------------------------------- recipes
def check_train_sections(config: dict, sections: Iterable[str]) -> None:
    """Build a ``TrainConfig`` from each named section of a recipe config, so a bad value fails
    before anything is written (``ValueError`` naming the section)."""
    from .modeling import build_config
    from .training import TrainConfig
    for name in sections:
        section = config.get(name)
        if not isinstance(section, dict):
            raise ValueError(f"config {name!r} must be a mapping of TrainConfig fields, got {section!r}")
        try:
            build_config(TrainConfig, section)
        except ValueError as e:
            raise ValueError(f"config {name!r}: {e}") from None


def _has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("train_state_*.pt")) or any(
        (run_dir / d).is_dir() for d in ("tokenizer", "prior", "prior_tokenizer"))


def start_run(run_dir: str | os.PathLike, config: dict, main: bool = True,
              train_sections: Iterable[str] = ()) -> Path:
    """A recipe's start: check ``train_sections`` of ``config``, lock ``run_dir`` for the rest
    of the run (main process only) and write ``config.yaml``. :func:`run_main` releases the
    lock and, if the recipe failed before any checkpoint existed, removes ``config.yaml``
    (and the run dir, if it made it and it is empty)."""
    from .config import save_config
    check_train_sections(config, train_sections)
    run_dir = check_run_dir(run_dir)
    if not main:
        return run_dir
    existed = run_dir.exists()
    acquire_run_lock(run_dir)
    _started.append((run_dir, existed))
    save_config(config, run_dir / CONFIG_FILE)
    return run_dir


def _finish_runs(failed: bool, keep: int = 0) -> None:
    """Close the runs :func:`start_run` opened after the first ``keep``."""
    while len(_started) > keep:
        run_dir, existed = _started.pop()
        if failed and not _has_checkpoint(run_dir):
            with contextlib.suppress(OSError):
                (run_dir / CONFIG_FILE).unlink(missing_ok=True)
        release_run_lock(run_dir)
        if failed and not existed:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if empty


# --------------------------------------------------------------------------- user errors
_OS_ERRORS = {
    errno.ENOSPC: "no space left on device while writing {f}; free some space and run again "
                  "(training resumes from its last checkpoint)",
    errno.EDQUOT: "disk quota exceeded while writing {f}; free some space and run again",
    errno.EROFS: "cannot write {f}: the file system is read-only",
    errno.EACCES: "cannot access {f}: permission denied",
    errno.EPERM: "cannot access {f}: operation not permitted",
    errno.EISDIR: "{f} is a directory, expected a file",
    errno.ENOTDIR: "{f}: a part of this path is a file, expected a directory",
    errno.EEXIST: "{f} already exists",
}


def user_error_message(exc: BaseException) -> str | None:
    """One line describing a user (or environment) mistake, or None for a bug.

    User mistakes: ``ValueError`` (incl. :class:`RunLockedError`), ``FileNotFoundError``,
    ``TrainingDivergedError`` and any ``OSError`` (full disk, read-only, permissions, unreadable
    files), whose message says so in plain words.
    """
    from .training import TrainingDivergedError
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        where = exc.filename or "a file"
        template = _OS_ERRORS.get(exc.errno)
        msg = template.format(f=where) if template else (
            f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    elif isinstance(exc, (ValueError, FileNotFoundError, TrainingDivergedError)):
        msg = str(exc)
    else:
        return None
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def run_main(fn: Callable[..., Any], *args: Any, prog: str = "vqgen") -> int:
    """Call ``fn(*args)``; return 0, or 2 after printing one line for a user mistake, or 130
    on Ctrl-C. Runs opened by :func:`start_run` are closed (see there). Bugs propagate."""
    failed, before = True, len(_started)
    try:
        fn(*args)
        failed = False
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        msg = user_error_message(e)
        if msg is None:
            raise
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        _finish_runs(failed, keep=before)
    return 0


# --------------------------------------------------------------------------- recipe arguments
RECIPE_OPEN_KEYS = ("tokenizer.overrides", "prior_tokenizer.overrides", "envelope_head.overrides", "prior_config.transformer",
                    "prior_config.pixelcnn")


def parse_recipe_args(config_path: str | os.PathLike, description: str | None, priors: Iterable[str],
                      argv: list[str] | None = None, example: str = "prior_train.steps=200") -> dict:
    """The command line every recipe shares: ``--config`` (default ``config_path``),
    ``--preset quick|full``, ``--runs``, ``--no-progress`` and ``key=value`` overrides with dotted
    keys (unknown keys fail). Returns the resolved config with ``runs`` and ``progress`` added.

    Raises ``ValueError`` for a bad override or a ``prior`` not in ``priors``."""
    import argparse

    from .config import load_config
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(config_path), help="recipe YAML (default: %(default)s)")
    p.add_argument("--preset", choices=["quick", "full"], default=None,
                   help="quick: CPU, minutes; full: quality run (see the YAML's presets)")
    p.add_argument("--runs", default="runs", help="parent folder of run directories (default: runs)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("overrides", nargs="*",
                   help=f"key=value config overrides with dotted keys, e.g. {example}")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.preset, args.overrides, open_keys=RECIPE_OPEN_KEYS)
    priors = sorted(priors)
    if cfg.get("prior") not in priors:
        raise ValueError(f"prior must be one of {priors}, got {cfg.get('prior')!r}")
    cfg["runs"], cfg["progress"] = args.runs, not args.no_progress
    return cfg
