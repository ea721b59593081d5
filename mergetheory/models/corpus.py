r"""The Python standard library's own source files as a byte-level text corpus.

Every machine with Python has this corpus offline. :func:`stdlib_files` lists the ``.py``
files under ``sysconfig.get_paths()["stdlib"]`` (sorted, POSIX relative paths), leaving
out test code (any ``test``, ``tests`` or ``idle_test`` directory), ``site-packages`` (not
the standard library) and caches. :func:`corpus_sha256` hashes the file list and contents.

**Families.** A *family* is a top-level package of the standard library (``email``,
``json``, ``asyncio``, ...); :data:`EXPERT_FAMILIES` lists the ones experts may be
fine-tuned on, largest first. The base model's pre-training text is every file that is in
*none* of :data:`EXPERT_FAMILIES` (whatever subset a configuration uses), so every expert
has text its base never saw, and the base corpus is the same for every configuration.

**Splits.** :func:`split_family` holds out whole files: in a seeded order, files go to
``test`` until it holds ``holdout`` of the family's bytes, then to ``val`` likewise, the
rest to ``train``. If no order among a few seeded tries leaves ``train`` at least
``1 - 3 * holdout`` of the bytes (a family dominated by one file, such as ``pydoc_data``
whose text is one 750 kB file of English documentation), the family's concatenated text is
cut into contiguous ``train | val | test`` ranges instead; the mode is recorded.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "EXPERT_FAMILIES",
    "FamilySplit",
    "corpus_sha256",
    "family_of",
    "read_bytes",
    "split_family",
    "stdlib_files",
    "stdlib_root",
    "text_windows",
]

# Top-level packages with enough text for an expert (bytes in CPython 3.11, tests excluded).
EXPERT_FAMILIES: tuple[str, ...] = (
    "encodings",
    "idlelib",
    "pydoc_data",
    "distutils",
    "asyncio",
    "email",
    "tkinter",
    "xml",
    "lib2to3",
    "multiprocessing",
    "unittest",
    "importlib",
    "http",
    "logging",
    "urllib",
    "html",
    "re",
    "xmlrpc",
    "concurrent",
    "ctypes",
    "turtledemo",
    "wsgiref",
    "json",
    "zoneinfo",
)
_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Sorted POSIX paths (relative to ``root``) of the standard library's ``.py`` files.

    Directories named ``test``, ``tests``, ``idle_test``, ``site-packages`` or
    ``__pycache__`` are skipped at any depth.

    Args:
      root: the standard library directory (default :func:`stdlib_root`).

    Returns:
      The sorted relative paths, e.g. ``("__future__.py", ..., "email/parser.py", ...)``.
    """
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib_files: {root} is not a directory")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        rel = Path(dirpath).relative_to(root)
        out.extend((rel / f).as_posix() for f in filenames if f.endswith(".py"))
    return tuple(sorted(out))


def family_of(path: str) -> str:
    """Family of a relative path: its top-level package, or the module name at top level."""
    head, sep, _ = path.partition("/")
    return head if sep else head.removesuffix(".py")


def read_bytes(root: str | os.PathLike[str], files: Sequence[str]) -> list[bytes]:
    """Contents of ``root / f`` for every ``f`` in ``files``."""
    return [(Path(root) / f).read_bytes() for f in files]


def corpus_sha256(files: Sequence[str], contents: Sequence[bytes]) -> str:
    """SHA-256 over every ``(path, length, content)`` in order (hex digest)."""
    h = hashlib.sha256()
    for f, c in zip(files, contents, strict=True):
        h.update(f.encode() + b"\0" + str(len(c)).encode() + b"\0")
        h.update(c)
    return h.hexdigest()


class FamilySplit(NamedTuple):
    """Train / val / test text of one family.

    Attributes:
      train, val, test: the concatenated bytes of each split (uint8 arrays).
      files: ``{"train": [...], "val": [...], "test": [...]}`` relative paths.
      mode: ``"files"`` (whole files held out) or ``"contiguous"`` (byte ranges).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    files: dict[str, list[str]]
    mode: str


def _concat(contents: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(contents), np.uint8).copy()


def split_family(
    files: Sequence[str],
    contents: Sequence[bytes],
    *,
    seed: int | Sequence[int],
    holdout: float = 0.1,
    num_tries: int = 16,
) -> FamilySplit:
    """Split one family's files into train / val / test (see the module docstring).

    Args:
      files: the family's relative paths (sorted).
      contents: their bytes.
      seed: seed of the file order (a NumPy ``Generator``; an int or a list of ints).
      holdout: target share of the bytes in ``val`` and in ``test`` each.
      num_tries: seeded file orders tried before falling back to contiguous ranges.

    Returns:
      :class:`FamilySplit`.
    """
    if not files:
        raise ValueError("split_family: the family has no files")
    sizes = np.array([len(c) for c in contents], np.int64)
    total = int(sizes.sum())
    rng = np.random.default_rng(seed)
    for _ in range(num_tries):
        order = rng.permutation(len(files))
        parts: dict[str, list[int]] = {"test": [], "val": [], "train": []}
        got = {"test": 0, "val": 0}
        for i in order:
            name = next((s for s in ("test", "val") if got[s] < holdout * total), "train")
            parts[name].append(int(i))
            if name != "train":
                got[name] += int(sizes[i])
        train_bytes = total - got["test"] - got["val"]
        if parts["test"] and parts["val"] and train_bytes >= (1 - 3 * holdout) * total:
            idx = {k: sorted(v) for k, v in parts.items()}
            return FamilySplit(
                *(_concat([contents[i] for i in idx[k]]) for k in ("train", "val", "test")),
                files={k: [files[i] for i in idx[k]] for k in ("train", "val", "test")},
                mode="files",
            )
    text = _concat(contents)
    n_hold = int(holdout * total)
    cut1, cut2 = total - 2 * n_hold, total - n_hold
    return FamilySplit(
        text[:cut1],
        text[cut1:cut2],
        text[cut2:],
        files={"train": list(files), "val": list(files), "test": list(files)},
        mode="contiguous",
    )


def text_windows(text: np.ndarray, num_windows: int, length: int) -> np.ndarray:
    """``num_windows`` windows of ``length`` bytes, evenly spaced over ``text``.

    Deterministic (no key): window ``j`` starts at ``round(j * (n - length) / (W - 1))``,
    so the windows tile the text when it is long enough and overlap when it is short.

    Returns:
      ``[num_windows, length]`` uint8.
    """
    n = int(text.shape[0])
    if n < length:
        raise ValueError(f"text_windows: text of {n} bytes is shorter than a window ({length})")
    starts = np.round(np.linspace(0, n - length, num_windows)).astype(np.int64)
    return np.stack([text[s : s + length] for s in starts])
