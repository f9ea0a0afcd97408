"""Crash-safe directory writes: build the new directory beside the target, fsync it, then swap it in by rename.

    with atomic_directory("runs/tok", overwrite=True, recognise=is_tokenizer_dir) as tmp:
        ...write every file under tmp...
    # now runs/tok is the new directory; the old one was replaced in one step

At every instant `path` is either the complete old directory or the complete new one: on Linux the swap is one
`renameat2(RENAME_EXCHANGE)`; elsewhere it is two renames and, if the process dies between them, the next write or
`recover` puts the newest complete copy back. Concurrent writers each build their own temporary directory, so the
target always holds one writer's complete output; a writer that finds the target taken (overwrite=False) gets a
FileExistsError and leaves nothing behind. Temporary directories of dead writers (`.NAME.tmp-<pid>-*`) are removed
by the next write to the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _fsync_tree(root: str) -> None:
    """fsyncs every file and directory under `root` (so a rename never publishes unwritten data)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two existing paths (Linux renameat2). False where unsupported (caller falls back)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _siblings(path: str, kind: str) -> list[tuple[str, int]]:
    """(directory, writer pid) of this target's `.NAME.<kind>-<pid>-*` siblings."""
    parent, base = os.path.split(path)
    prefix = f".{base}.{kind}-"
    out = []
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            if pid.isdigit():
                out.append((os.path.join(parent, name), int(pid)))
    return out


def recover(path: str, recognise: Callable[[str], bool]) -> None:
    """Repairs what a writer killed between the two renames of the fallback swap left: when `path` is missing, the
    newest complete new copy (`.NAME.new-*`, else the kept old one `.NAME.old-*`) of a dead writer moves back into
    place. Temporary directories of dead writers are removed."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        for kind in ("new", "old"):
            candidates = [(os.path.getmtime(d), d) for d, pid in _siblings(path, kind)
                          if not _pid_alive(pid) and recognise(d)]
            if candidates:
                os.rename(max(candidates)[1], path)
                break
    for kind in ("tmp", "new", "old"):
        for d, pid in _siblings(path, kind):
            if not _pid_alive(pid) and os.path.exists(d):
                shutil.rmtree(d, ignore_errors=True)


def check_replaceable(path: str, overwrite: bool, recognise: Callable[[str], bool], what: str) -> None:
    """Raises FileExistsError unless `path` is missing, an empty directory, or (with `overwrite`) a directory that
    `recognise` accepts as a previous `what` — nothing else is ever deleted."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise FileExistsError(f"{path!r} exists and is a file, not a {what} directory; choose another path.")
    if not os.listdir(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path!r} already exists and is not empty; pass overwrite=True to replace it.")
    if not recognise(path):
        raise FileExistsError(f"{path!r} is not a saved {what} (its files are not the ones a {what} save writes), "
                              f"so overwrite=True will not delete it; choose another path or remove it yourself.")


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False, recognise: Callable[[str], bool] = lambda p: False,
                     what: str = "directory") -> Iterator[str]:
    """Yields a fresh temporary directory beside `path`; on a clean exit it becomes `path` in one step.

    Args:
      path: the directory to create or replace.
      overwrite: allow replacing an existing non-empty directory, which must be one `recognise` accepts.
      recognise: `recognise(dir)` is True for a directory this kind of save wrote (e.g. a saved tokenizer).
      what: the artifact's name in error messages.
    Raises:
      FileExistsError: `path` is taken (no overwrite, or not a recognised artifact), also when another writer
        created it during this write; nothing of this write is kept then.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    recover(path, recognise)
    check_replaceable(path, overwrite, recognise, what)
    pid = os.getpid()
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-{pid}-", dir=parent)
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.isdir(path) and not os.listdir(path):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        if not os.path.exists(path):
            try:
                os.rename(tmp, path)  # fails if another writer published a non-empty `path` meanwhile
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise FileExistsError(f"{path!r} was written by another process during this save; this save's "
                                      f"output was discarded (save again with overwrite=True to replace it).") from e
            _fsync_dir(parent)
            return
        check_replaceable(path, overwrite, recognise, what)  # another writer may have published meanwhile
        if _exchange(tmp, path):  # tmp now holds the old directory
            _fsync_dir(parent)
            return
        new = os.path.join(parent, f".{base}.new-{pid}-{os.path.basename(tmp).rsplit('-', 1)[-1]}")
        old = os.path.join(parent, f".{base}.old-{pid}-{os.path.basename(tmp).rsplit('-', 1)[-1]}")
        os.rename(tmp, new)
        os.rename(path, old)
        os.rename(new, path)
        _fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
