"""The data of an expert zoo: training sets, evaluation sets and their provenance.

:func:`language_data` builds, from the standard-library corpus (:mod:`.corpus`), the base
model's pre-training text (every file outside :data:`.corpus.EXPERT_FAMILIES`, a few files
held out for the base's own validation loss) and, per expert family, its training text and
fixed evaluation windows on held-out files. :func:`vision_data` does the same for the
digits tasks of :mod:`.vision`. Both return a :class:`ZooData`; everything is a pure
function of the task names, the sizes and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .corpus import (
    EXPERT_FAMILIES,
    corpus_sha256,
    family_of,
    read_bytes,
    split_family,
    stdlib_files,
    stdlib_root,
    text_windows,
)
from .vision import make_vision_tasks

__all__ = ["ZooData", "language_data", "vision_data"]

_BASE_SPLIT_ID = 1000  # seed stream of the base corpus's held-out files


class ZooData(NamedTuple):
    """Training and evaluation arrays of one zoo.

    Attributes:
      base_train: the base's training data (language: ``(text uint8 [N], size)``;
        vision: ``(x [n, 64], y [n])``).
      task_train: per-task training data, stacked (language: ``(text [T, N_max], sizes
        [T])``, zero-padded; vision: ``(x [T, n, 64], y [T, n])``).
      eval: ``{"val": data, "test": data}``, per task (language: windows ``[T, W, L+1]``
        uint8; vision: ``(x [T, n, 64], y [T, n])``).
      base_val: a fixed held-out batch of the base's distribution (language: windows
        ``[W, L+1]``; vision: ``(x, y)`` of the plain task's val split).
      sha256: hash of the raw data (corpus files or digits arrays).
      info: provenance (file lists, per-family split modes and sizes, unigram baselines).
    """

    base_train: Any
    task_train: Any
    eval: dict[str, Any]
    base_val: Any
    sha256: str
    info: dict[str, Any]


def _unigram_bits(train: np.ndarray, windows: np.ndarray) -> float:
    """Cross-entropy (bits) of the windows' predicted bytes under add-one byte counts."""
    counts = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[windows[:, 1:].astype(np.int64)].mean())


def language_data(
    families: Sequence[str],
    *,
    seed: int,
    context: int,
    num_eval_windows: int,
    holdout: float,
) -> ZooData:
    """Stdlib corpus data of a language zoo (see the module docstring).

    Args:
      families: expert families (each in :data:`EXPERT_FAMILIES` and present here).
      seed: seed of the held-out file choice.
      context: model context ``L``; windows hold ``L + 1`` bytes (inputs and targets).
      num_eval_windows: evaluation windows per task and split.
      holdout: share of each family's bytes in val and in test.

    Returns:
      :class:`ZooData`.
    """
    root = stdlib_root()
    files = stdlib_files(root)
    contents = read_bytes(root, files)
    by_family: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_family.setdefault(family_of(f), []).append(i)
    for fam in families:
        if fam not in EXPERT_FAMILIES:
            raise ValueError(f"language task {fam!r}: not one of EXPERT_FAMILIES {EXPERT_FAMILIES}")
        if fam not in by_family:
            raise ValueError(f"language task {fam!r}: no such package in {root}")
    length = context + 1
    base_idx = [i for i, f in enumerate(files) if family_of(f) not in EXPERT_FAMILIES]
    base = split_family(
        [files[i] for i in base_idx],
        [contents[i] for i in base_idx],
        seed=[seed, _BASE_SPLIT_ID],
        holdout=0.02,
    )
    base_train = np.concatenate([base.train, base.test])  # the base's test files train it too
    splits, fam_info = [], {}
    for fam in families:
        idx = by_family[fam]
        sp = split_family(
            [files[i] for i in idx],
            [contents[i] for i in idx],
            seed=[seed, EXPERT_FAMILIES.index(fam)],
            holdout=holdout,
        )
        splits.append(sp)
        fam_info[fam] = {
            "mode": sp.mode,
            "files": sp.files,
            "bytes": {"train": sp.train.size, "val": sp.val.size, "test": sp.test.size},
        }
    n_max = max(sp.train.size for sp in splits)
    text = np.zeros((len(splits), n_max), np.uint8)
    for t, sp in enumerate(splits):
        text[t, : sp.train.size] = sp.train
    sizes = np.array([sp.train.size for sp in splits], np.int32)
    evals = {
        s: np.stack([text_windows(getattr(sp, s), num_eval_windows, length) for sp in splits])
        for s in ("val", "test")
    }
    base_val = text_windows(base.val, max(num_eval_windows, 32), length)
    unigram = [_unigram_bits(base_train, w) for w in evals["test"]]
    info = {
        "root": str(root),
        "num_files": len(files),
        "files": list(files),
        "sha256": corpus_sha256(files, contents),
        "base_corpus": {
            "rule": "every file outside EXPERT_FAMILIES",
            "excluded_families": list(EXPERT_FAMILIES),
            "num_files": len(base_idx),
            "train_bytes": int(base_train.size),
            "val_files": base.files["val"],
            "val_bytes": int(base.val.size),
        },
        "families": fam_info,
        "unigram_bits_per_byte": unigram,
    }
    return ZooData(
        (base_train, np.int32(base_train.size)),
        (text, sizes),
        evals,
        base_val,
        info["sha256"],
        info,
    )


def vision_data(tasks: Sequence[str], *, seed: int) -> ZooData:
    """Digits data of a vision zoo: plain train split for the base, every task's splits.

    Args:
      tasks: task names ``"transform:label_map"``.
      seed: seed of the split, the noise and the permutations.

    Returns:
      :class:`ZooData`.
    """
    vt = make_vision_tasks(tasks, seed)
    plain = vt.plain
    info = {
        "dataset": "sklearn.datasets.load_digits",
        "sha256": plain.sha256,
        "split_sizes": {s: int(plain.y[s].size) for s in ("train", "val", "test")},
    }
    return ZooData(
        (plain.x["train"], plain.y["train"]),
        (vt.x["train"], vt.y["train"]),
        {s: (vt.x[s], vt.y[s]) for s in ("val", "test")},
        (plain.x["val"], plain.y["val"]),
        plain.sha256,
        info,
    )
