r"""Digits tasks with a controlled similarity structure: input transforms x label maps.

A task is a pair ``"transform:label_map"`` applied to scikit-learn's bundled digits (8x8
images in ``[0, 1]``, labels ``0..9``). Every task keeps the 10-way output head (its labels
lie in ``0..9``), so every expert has the base model's architecture and its task vector
lives in one parameter space. Tasks sharing a transform share their inputs; tasks sharing a
label map share their labelling rule; the pixel permutations of increasing fraction form a
graded family of input shifts. The plain task is ``"identity:identity"``.

Input transforms (:data:`TRANSFORMS`), on the 8x8 image:

* ``identity``; ``rot90``, ``rot180``, ``rot270`` (counter-clockwise); ``flip_lr``,
  ``flip_ud``; ``transpose``;
* ``invert``: :math:`1 - x`;
* ``blur``: separable binomial kernel ``[1, 2, 1] / 4`` along both axes, edges replicated;
* ``noise``: :math:`x + 0.3\,\varepsilon`, :math:`\varepsilon \sim N(0, 1)` drawn once per
  image (fixed by the seed);
* ``perm_f`` (``f`` in ``0.1, 0.3, 0.6, 1.0``): the first ``round(64 f)`` pixels of one
  seeded ordering of the 64 pixels are permuted among themselves by a seeded
  permutation; the subsets are nested, so ``perm_0.1`` is closest to the plain task.

Label maps (:data:`LABEL_MAPS`): ``identity``; ``parity`` (:math:`y \bmod 2`); ``gt4``
(:math:`[y > 4]`); ``mod3`` (:math:`y \bmod 3`); ``reverse`` (:math:`9 - y`); ``shift``
(:math:`(y + 1) \bmod 10`).

Reference: the transform-family design follows the permuted-MNIST / rotated-MNIST
benchmarks of continual learning (Goodfellow et al., ``goodfellow2013empirical`` in
``paper/refs.bib``), here crossed with label maps; reconstructed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "LABEL_MAPS",
    "TRANSFORMS",
    "DigitsSplits",
    "VisionTasks",
    "digits_splits",
    "make_vision_tasks",
    "parse_task",
]

TRANSFORMS = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_lr",
    "flip_ud",
    "transpose",
    "invert",
    "blur",
    "noise",
    "perm_0.1",
    "perm_0.3",
    "perm_0.6",
    "perm_1.0",
)
LABEL_MAPS = ("identity", "parity", "gt4", "mod3", "reverse", "shift")
SPLITS = ("train", "val", "test")


class DigitsSplits(NamedTuple):
    """Digits split into train / val / test (features ``[n, 64]`` float32 in ``[0, 1]``).

    Attributes:
      x: ``{"train": [n_tr, 64], "val": ..., "test": ...}``.
      y: ``{"train": [n_tr] int32, ...}``.
      sha256: hash of the raw digits data (images and labels).
    """

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    sha256: str


def digits_splits(seed: int, *, val_fraction: float = 0.2, test_fraction: float = 0.2):
    """Load scikit-learn's digits and split them with a seeded permutation.

    Returns:
      :class:`DigitsSplits`.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, np.float32) / np.float32(16.0)
    y = np.asarray(bunch.target, np.int32)
    sha = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    perm = np.random.default_rng(seed).permutation(y.size)
    n_val, n_test = int(round(val_fraction * y.size)), int(round(test_fraction * y.size))
    idx = {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
    }
    return DigitsSplits({k: x[v] for k, v in idx.items()}, {k: y[v] for k, v in idx.items()}, sha)


def parse_task(name: str) -> tuple[str, str]:
    """``"rot90:parity" -> ("rot90", "parity")``; raises on an unknown part."""
    transform, sep, label_map = name.partition(":")
    if not sep or transform not in TRANSFORMS or label_map not in LABEL_MAPS:
        raise ValueError(
            f"vision task {name!r}: expected 'transform:label_map' with transform in "
            f"{TRANSFORMS} and label_map in {LABEL_MAPS}"
        )
    return transform, label_map


def _blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    p = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4


def _transform(name: str, x: np.ndarray, rng_seed: int, split: str) -> np.ndarray:
    img = x.reshape(-1, 8, 8)
    if name == "identity":
        out = img
    elif name.startswith("rot"):
        out = np.rot90(img, int(name[3:]) // 90, axes=(1, 2))
    elif name == "flip_lr":
        out = img[:, :, ::-1]
    elif name == "flip_ud":
        out = img[:, ::-1, :]
    elif name == "transpose":
        out = np.swapaxes(img, 1, 2)
    elif name == "invert":
        out = 1 - img
    elif name == "blur":
        out = _blur(img)
    elif name == "noise":
        split_id = SPLITS.index(split)
        eps = np.random.default_rng([rng_seed, 1, split_id]).standard_normal(img.shape)
        out = img + 0.3 * eps
    else:  # perm_f: nested subsets of one seeded pixel ordering
        frac = float(name.split("_")[1])
        rng = np.random.default_rng([rng_seed, 2])
        order = rng.permutation(64)
        m = int(round(64 * frac))
        perm = np.arange(64)
        perm[order[:m]] = order[:m][rng.permutation(m)]
        out = x.reshape(-1, 64)[:, perm]
    return np.ascontiguousarray(out.reshape(-1, 64), np.float32)


def _label_map(name: str, y: np.ndarray) -> np.ndarray:
    table = {
        "identity": y,
        "parity": y % 2,
        "gt4": (y > 4).astype(y.dtype),
        "mod3": y % 3,
        "reverse": 9 - y,
        "shift": (y + 1) % 10,
    }
    return np.asarray(table[name], np.int32)


class VisionTasks(NamedTuple):
    """Every task's inputs and labels on every split, stacked on a leading task axis.

    Attributes:
      names: the ``T`` task names.
      x: ``{"train": [T, n_tr, 64], "val": [T, n_val, 64], "test": [T, n_test, 64]}``.
      y: ``{"train": [T, n_tr] int32, ...}`` (labels in ``0..9``).
      plain: the untransformed splits (the base's data).
    """

    names: tuple[str, ...]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    plain: DigitsSplits


def make_vision_tasks(names: Sequence[str], seed: int) -> VisionTasks:
    """Build the tasks ``names`` (``"transform:label_map"``) on a seeded digits split.

    Args:
      names: task names, e.g. ``("rot90:identity", "invert:parity")``.
      seed: seed of the split, the noise and the pixel permutations.

    Returns:
      :class:`VisionTasks`.
    """
    plain = digits_splits(seed)
    parsed = [parse_task(n) for n in names]
    x = {s: np.stack([_transform(t, plain.x[s], seed, s) for t, _ in parsed]) for s in SPLITS}
    y = {s: np.stack([_label_map(m, plain.y[s]) for _, m in parsed]) for s in SPLITS}
    return VisionTasks(tuple(names), x, y, plain)
