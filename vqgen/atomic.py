"""Crash-safe files and directories: atomic writes, locked directory swaps, recovery, clean-up.

Every writer in the package goes through these helpers, so a ``kill -9`` (or a full disk) at
any moment leaves either the old or the new complete file, never a mix:

- :func:`atomic_write` writes a temporary sibling ``.<name>.<random>.tmp`` and ``os.replace``-s
  it onto the target. Disk errors surface as ``OSError`` with their ``errno`` (``ENOSPC``,
  ``EROFS``, ...) even from writers that hide them (``torch.save`` raises "unexpected pos").
- :func:`atomic_directory` builds a whole directory in ``.<name>.<random>.tmp``, marks it
  complete by renaming it to ``.<name>.<random>.new``, moves the old directory aside to
  ``<name>.old-<ns>-<pid>``, moves the new one in and deletes the old one. The whole sequence
  holds an exclusive ``flock`` on ``.<name>.lock`` beside the directory, so saves of one
  directory from two processes never interleave.
- :func:`recover_directory` (run under that lock) restores a directory that a crash left
  missing between the two renames from the newest complete copy (by content mtime: a ``.new``
  or an ``.old-*``), and :func:`remove_stale_temps` deletes what dead writers left behind.

Files and directories get the permissions of ordinary output (``0o666`` / ``0o777`` minus the
user's umask), not ``mkstemp``'s private ``0o600`` / ``0o700``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch

TMP_SUFFIX = ".tmp"
NEW_SUFFIX = ".new"
OLD_INFIX = ".old-"
_TEMP_NAME = re.compile(r"^\.(?P<base>.+)\.[^.]+\.(tmp|new)$")   # .<base>.<random>.tmp|new
_OLD_NAME = re.compile(r"^(?P<base>.+)\.old-[0-9-]+$")          # <base>.old-<ns>-<pid>


# --------------------------------------------------------------------------- permissions
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of an ordinary new file: ``0o666`` minus the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode of an ordinary new directory: ``0o777`` minus the umask."""
    return 0o777 & ~_umask()


# --------------------------------------------------------------------------- disk errors
def _open_for_write(path: str) -> IO[bytes]:
    """The one place bytes reach the disk (tests patch it to simulate a full disk)."""
    return open(path, "wb")


class _ErrorKeepingFile:
    """Writes through to ``f`` and remembers the first ``OSError``: ``torch.save`` turns a
    failed ``write`` into ``RuntimeError: ... unexpected pos``, losing the errno."""

    def __init__(self, f: IO[bytes]):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _disk_error(e: BaseException, path: Path) -> OSError | None:
    """An ``OSError`` that says what went wrong when a third-party writer raised ``e`` (for
    writers that report a full disk without an errno); None when the disk looks fine."""
    if isinstance(e, OSError):
        return None
    with contextlib.suppress(OSError):
        if shutil.disk_usage(path.parent).free < 64 * 1024:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _named(e: OSError, path: Path) -> OSError:
    """``e`` (same errno) naming ``path``."""
    return type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))


# --------------------------------------------------------------------------- atomic files
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then move the temporary file onto ``path`` in one rename.

    A crash during ``write`` leaves the previous ``path`` untouched (and a ``.<name>.*.tmp``
    that :func:`remove_stale_temps` deletes). Raises ``OSError`` (errno ``ENOSPC`` when the disk
    filled up) or whatever ``write`` raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the file normal permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        disk = _disk_error(e, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if disk is not None:
            raise disk from e
        if isinstance(e, OSError) and e.errno and (not e.filename or e.filename == tmp):
            raise _named(e, path) from e        # write() names no file; tmp is ours
        raise


def write_bytes_to(tmp: str, data: bytes | memoryview) -> None:
    """Write ``data`` to the (temporary) file ``tmp`` through :func:`_open_for_write`."""
    with _open_for_write(tmp) as f:
        f.write(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    atomic_write(path, lambda tmp: write_bytes_to(tmp, data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` atomically; a full disk raises ``OSError(ENOSPC)``."""
    def _write(tmp: str) -> None:
        with _open_for_write(tmp) as f:
            keeper = _ErrorKeepingFile(f)
            try:
                torch.save(obj, keeper)
            except RuntimeError:
                if keeper.error is not None:
                    raise keeper.error from None
                raise
    atomic_write(path, _write)


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def file_lock(path: str | os.PathLike, blocking: bool = True, remove: bool = True) -> Iterator[int]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing) for the block.

    The kernel releases it when the process dies, also on ``kill -9``. With ``blocking=False``
    raises ``BlockingIOError`` at once when another process holds it. With ``remove`` the
    holder deletes the file on release; a waiter that then wins the lock on the deleted file
    notices (its inode is no longer at ``path``) and tries again. Locks are per open file: a
    process that locks the same path twice blocks itself.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # the kernel applies umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            st = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev):
            break
        os.close(fd)  # the previous holder removed the file after we opened it
    try:
        yield fd
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


# --------------------------------------------------------------------------- recovery
def _content_mtime(directory: Path) -> int:
    """Newest mtime (ns) of the files in ``directory``: when its content was written."""
    times = [e.stat().st_mtime_ns for e in os.scandir(directory) if e.is_file()]
    return max(times, default=directory.stat().st_mtime_ns)


def _copies(path: Path) -> list[Path]:
    """Complete copies of ``path`` left by interrupted swaps: ``.<name>.*.new`` and
    ``<name>.old-*`` directories."""
    out = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else ():
        temp, old = _TEMP_NAME.match(entry.name), _OLD_NAME.match(entry.name)
        if entry.is_dir() and ((temp and temp["base"] == path.name and entry.name.endswith(NEW_SUFFIX))
                               or (old and old["base"] == path.name)):
            out.append(entry)
    return out


def recover_directory(path: str | os.PathLike) -> bool:
    """If ``path`` is missing, move the newest complete copy (by content mtime; a ``.new``
    wins a tie) into its place. Call under the directory's lock. Returns True if it did."""
    path = Path(path)
    if path.exists():
        return False
    copies = _copies(path)
    if not copies:
        return False
    best = max(copies, key=lambda d: (_content_mtime(d), d.name.endswith(NEW_SUFFIX)))
    os.replace(best, path)
    return True


def remove_stale_temps(directory: str | os.PathLike, base: str | None = None) -> list[Path]:
    """Delete temporaries of dead writers in ``directory``: ``.<base>.*.tmp`` / ``.new`` files
    and dirs and ``<base>.old-*`` dirs (every base when ``base`` is None). Call only while
    holding the lock that excludes live writers. Returns what was removed."""
    directory, removed = Path(directory), []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP_NAME.match(entry.name) or _OLD_NAME.match(entry.name)
        if match is None or (base is not None and match["base"] != base):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def recover_and_clean(directory: str | os.PathLike) -> None:
    """Under a lock that excludes every writer of ``directory``: restore each directory an
    interrupted swap left missing, then delete all stale temporaries in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in list(directory.iterdir()):
        match = _TEMP_NAME.match(entry.name) or _OLD_NAME.match(entry.name)
        if match is not None:
            recover_directory(directory / match["base"])
    remove_stale_temps(directory)


# --------------------------------------------------------------------------- directory swap
@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block exits cleanly.

    Holds an exclusive lock on ``.<name>.lock`` (beside ``path``) from start to end, so two
    processes saving ``path`` take turns. A crash at any point leaves the old or the new
    complete directory (or, between the two renames, a complete copy that
    :func:`recover_directory` restores on the next save or load).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_path(path)):
        recover_directory(path)
        remove_stale_temps(path.parent, path.name)  # dead writers' leftovers (we hold the lock)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
        try:
            os.chmod(tmp, dir_mode())                # mkdtemp makes 0700
            yield tmp
            new = tmp.with_name(tmp.name[:-len(TMP_SUFFIX)] + NEW_SUFFIX)
            os.replace(tmp, new)                     # complete: recovery may now use it
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno and str(tmp) in str(e.filename or tmp):
                raise _named(e, path) from e        # name the directory, not our temp copy
            raise
        old = None
        if path.exists():
            old = path.with_name(f"{path.name}{OLD_INFIX}{time.time_ns()}-{os.getpid()}")
            os.replace(path, old)
        os.replace(new, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def ensure_directory(path: str | os.PathLike) -> None:
    """Restore ``path`` after an interrupted swap, if needed, before reading it. Takes the
    lock only when ``path`` is missing, so reading from a read-only place works."""
    path = Path(path)
    if path.exists() or not _copies(path):
        return
    with file_lock(_lock_path(path)):
        recover_directory(path)
