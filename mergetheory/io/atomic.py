"""Atomic writes: a temporary sibling, flushed and fsynced, then renamed onto the target.

A reader never sees a half-written file or directory under the real name, and an exception
during writing leaves any previous version untouched and no temporary behind. Every
temporary is named ``.<name>.tmp-<pid>-<random>`` in the destination's directory (one
naming rule for files and directories, so stale ones are recognisable as ours): a process
killed mid-write leaves its temporary behind, and the next write of the same target
removes those whose process is gone (:func:`clean_stale_temps`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_dir",
    "clean_stale_temps",
    "temp_sibling",
]

STALE_AGE_S = 3600.0
"""A temporary without a process id (older naming) is stale after this many seconds."""


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name ``.<name>.tmp-<pid>-<random>`` next to ``path`` (not created)."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``path`` left by killed writers; return what was removed.

    A temporary ``.<name>.tmp-<pid>-<random>`` is stale when process ``pid`` no longer
    exists on this machine; one of the older form ``.<name>.tmp-<random>`` when it is
    older than :data:`STALE_AGE_S`. Live writers' temporaries are never touched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(?:(\d+)-)?[0-9a-f]{{12}}")
    removed = []
    now = time.time()
    for entry in path.parent.iterdir():
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            if m[1] is not None:
                stale = not _pid_alive(int(m[1]))
            else:
                stale = now - entry.lstat().st_mtime > STALE_AGE_S
            if not stale:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:  # raced with another cleaner, or not ours to remove
            continue
        removed.append(entry)
    return removed


def _file_mode(path: Path) -> int:
    """Mode for a new file: the existing file's, else ``0o666`` minus the umask.

    The temporary is created with mode ``0o600``; results are meant to be shared.
    """
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        pass
    try:  # Linux: read the umask without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success move it onto ``path`` atomically.

    On an exception inside the ``with`` block the temporary file is removed and ``path``
    is left as it was.

    Args:
      path: destination file; its directory is created if needed.
      mode: ``"wb"`` or ``"w"``.

    Yields:
      The open temporary file.

    Example:
      >>> with atomic_write("out/table.txt", "w") as f:
      ...     f.write("done\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory name next to ``path`` (not created); on success rename
    it onto ``path``, on an exception remove it (``path`` left as it was).

    If ``path`` exists, the old directory is first moved aside (another atomic rename) and
    deleted only after the new one is in place.

    Example:
      >>> with atomic_dir("out/ckpt") as tmp:
      ...     tmp.mkdir()
      ...     (tmp / "a.txt").write_text("done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        old = None
        if path.exists():
            old = temp_sibling(path)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_dir(path: str | os.PathLike[str], write_fn: Callable[[Path], None]) -> None:
    """Run ``write_fn(tmp_dir)`` (it creates ``tmp_dir``), then rename ``tmp_dir`` onto
    ``path`` (:func:`atomic_dir`)."""
    with atomic_dir(path) as tmp:
        write_fn(tmp)
