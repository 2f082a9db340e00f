"""One way to show progress: a tqdm bar that stays quiet in logs and on other DDP ranks.

On a terminal the bar refreshes every 0.1 s; when stderr is a file or a pipe (a log, CI, a
notebook's captured output) it writes a line at most every 10 s, so long steps still show life
without flooding the log. Ranks other than 0 under ``torchrun`` never draw one.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
                 enabled: bool = True, leave: bool = False, **kwargs: Any) -> tqdm:
    """A ``tqdm`` over ``iterable`` (or a manual bar of ``total`` steps) labelled ``desc``.

    ``enabled=False``, a non-zero ``RANK`` or ``TQDM_DISABLE=1`` gives a silent bar that still
    iterates. Extra keyword arguments go to ``tqdm``.
    """
    rank0 = os.environ.get("RANK", "0") in ("", "0")
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True,
                disable=not (enabled and rank0),
                mininterval=0.1 if sys.stderr.isatty() else 10.0, **kwargs)
