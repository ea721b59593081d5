r"""An expert zoo trained here on real data: a base model, full and LoRA experts, metrics.

Two modalities (details and measured times in ``docs/zoo.md``):

* ``"language"``: a byte-level decoder-only transformer (:mod:`.language`) pre-trained on
  the Python standard library's source files outside every expert family, and one expert
  per stdlib package family (``email``, ``json``, ``asyncio``, ...; :mod:`.corpus`),
  evaluated in **bits per byte** (lower is better) on the family's held-out files;
* ``"vision"``: the digits MLP (:mod:`.mlp`) pre-trained on the plain 10-class task, and
  one expert per ``transform:label_map`` task (:mod:`.vision`), evaluated in **accuracy**.

Every expert exists twice, as a full fine-tune (task vector
:math:`\tau_t = \theta_t - \theta_0`) and as a LoRA adapter on the 2-D kernels (PEFT
convention, :mod:`.lora_train`): ``B [T, d_out, r]``, ``A [T, r, d_in]``, scaling
:math:`\alpha / r`. Flax kernels are ``[d_in, d_out]``, so the LoRA update of kernel ``W``
is :math:`s\,(B A)^\top`: :func:`.zoo_eval.lora_dense_updates` returns it in the kernel's layout,
while a ``{path: update}`` dict given to :func:`.zoo_eval.params_from_delta` is read in PEFT's
``[d_out, d_in]`` layout (the layout of ``s B A`` from :func:`mergetheory.lora.densify` or
:func:`mergetheory.merge.lora.lora_delta`).

Everything is a deterministic function of the :class:`ZooSpec` (base, then all full
experts in one ``vmap``, then all LoRA experts in one ``vmap``; Adam; step ``i`` of every
run samples with ``fold_in(key, i)``). :func:`build_zoo` caches the result with orbax
(:func:`mergetheory.io.save_orbax`) under ``cache_dir/<fingerprint>/``, where the
fingerprint (:func:`zoo_fingerprint`) hashes the spec, the data (file list and contents, or
the digits arrays), the source of the modules that decide the trained weights and the x64
flag. Scoring models and building them from deltas live in :mod:`.zoo_eval`, outside the
fingerprint.

Example:
  >>> from mergetheory.models.zoo_eval import evaluate_deltas
  >>> zoo = build_zoo(zoo_spec("vision", "tiny"), cache_dir="results/zoo")
  >>> merged = jax.tree.map(lambda t: t.mean(0, keepdims=True), zoo.full_task_vectors)
  >>> evaluate_deltas(zoo, merged)     # [1, T] accuracies on every task's test split

Reference: Ilharco et al., "Editing Models with Task Arithmetic" (``ilharco2023editing``
in ``paper/refs.bib``); Hu et al., LoRA (``hu2022lora``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import LoraFactors
from .zoo_data import ZooData, language_data, vision_data
from .zoo_train import (
    TrainConfig,
    eval_diagonal,
    eval_tasks,
    init_params,
    lora_expert_params,
    model_loss,
    train,
)

__all__ = [
    "ExpertZoo",
    "ZooSpec",
    "build_zoo",
    "train_config",
    "zoo_data",
    "zoo_fingerprint",
    "zoo_spec",
]

MODALITIES = ("language", "vision")
SIZES = ("tiny", "default", "large")
# the code that decides the trained weights (evaluation lives in zoo_eval.py, outside it)
_CODE_FILES = (
    "zoo.py",
    "zoo_data.py",
    "zoo_train.py",
    "corpus.py",
    "language.py",
    "vision.py",
    "lora_train.py",
    "mlp.py",
)


class ZooSpec(NamedTuple):
    """Configuration of an expert zoo (hashable; every field enters the fingerprint).

    Attributes:
      modality: ``"language"`` or ``"vision"``.
      size: ``"tiny"`` (tests), ``"default"`` (``make reproduce``) or ``"large"``.
      seed: the one integer every key and split derives from.
      lora_rank: LoRA rank ``r``.
      lora_alpha: LoRA ``alpha`` (scaling ``alpha / r``).
      tasks: language: stdlib families; vision: ``"transform:label_map"`` names.
      d_model, num_layers, num_heads, context: transformer shape (language only).
      hidden: MLP hidden widths (vision only).
      base_steps, base_lr, base_batch: base training (warm-up + cosine decay).
      expert_steps, expert_lr, lora_lr, expert_batch: expert training (constant step).
      num_eval_windows: language evaluation windows per task and split.
      holdout: language: share of each family's bytes held out for val and for test.
      replay_fraction: share of every expert minibatch drawn from the base's training data
        (limits forgetting of what the base knows; 0 = the task's data only).
    """

    modality: str
    size: str = "default"
    seed: int = 0
    lora_rank: int = 4
    lora_alpha: float = 8.0
    tasks: tuple[str, ...] = ()
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    context: int = 64
    hidden: tuple[int, ...] = (64,)
    base_steps: int = 1000
    base_lr: float = 3e-3
    base_batch: int = 32
    expert_steps: int = 200
    expert_lr: float = 1e-3
    lora_lr: float = 3e-3
    expert_batch: int = 16
    num_eval_windows: int = 32
    holdout: float = 0.1
    replay_fraction: float = 0.0


_LANG_16 = (
    "email", "json", "asyncio", "xml", "distutils", "unittest", "logging", "multiprocessing",
    "urllib", "importlib", "tkinter", "idlelib", "lib2to3", "ctypes", "concurrent",
    "pydoc_data",
)  # fmt: skip
_LANG_24 = _LANG_16 + (
    "http", "encodings", "html", "re", "xmlrpc", "wsgiref", "turtledemo", "zoneinfo",
)  # fmt: skip


def _vision_grid(transforms: Sequence[str], label_maps: Sequence[str]) -> tuple[str, ...]:
    names = [f"{t}:{m}" for t in transforms for m in label_maps]
    return tuple(n for n in names if n != "identity:identity")  # that one is the base task


_VISION_T12 = (
    "identity", "rot90", "rot180", "rot270", "flip_lr", "invert", "blur", "noise",
    "perm_0.1", "perm_0.3", "perm_0.6", "perm_1.0",
)  # fmt: skip
_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("language", "tiny"): dict(
        tasks=("pydoc_data", "encodings", "tkinter", "xml"),
        d_model=32,
        num_layers=1,
        num_heads=2,
        context=32,
        base_steps=300,
        base_lr=3e-3,
        base_batch=16,
        expert_steps=120,
        expert_lr=3e-3,
        lora_lr=1e-2,
        expert_batch=16,
        num_eval_windows=16,
    ),
    ("language", "default"): dict(
        tasks=_LANG_16,
        d_model=64,
        num_layers=2,
        num_heads=4,
        context=64,
        base_steps=1500,
        base_lr=3e-3,
        base_batch=32,
        expert_steps=200,
        expert_lr=7e-4,
        lora_lr=2e-3,
        expert_batch=16,
        num_eval_windows=32,
        replay_fraction=0.25,
    ),
    ("language", "large"): dict(
        tasks=_LANG_24,
        d_model=128,
        num_layers=3,
        num_heads=4,
        context=128,
        base_steps=4000,
        base_lr=2e-3,
        base_batch=32,
        expert_steps=400,
        expert_lr=5e-4,
        lora_lr=2e-3,
        expert_batch=16,
        num_eval_windows=64,
        replay_fraction=0.25,
        lora_rank=8,
        lora_alpha=16.0,
    ),
    ("vision", "tiny"): dict(
        tasks=_vision_grid(("identity", "rot90", "invert", "perm_1.0"), ("identity", "parity")),
        hidden=(32,),
        base_steps=300,
        base_lr=1e-2,
        base_batch=64,
        expert_steps=150,
        expert_lr=3e-3,
        lora_lr=1e-2,
        expert_batch=64,
    ),
    ("vision", "default"): dict(
        tasks=_vision_grid(_VISION_T12, ("identity", "parity", "gt4", "mod3")),
        hidden=(64,),
        base_steps=1000,
        base_lr=1e-2,
        base_batch=64,
        expert_steps=400,
        expert_lr=3e-3,
        lora_lr=1e-2,
        expert_batch=64,
    ),
    ("vision", "large"): dict(
        tasks=_vision_grid(
            _VISION_T12 + ("flip_ud", "transpose"),
            ("identity", "parity", "gt4", "mod3", "reverse", "shift"),
        ),
        hidden=(128, 128),
        base_steps=3000,
        base_lr=5e-3,
        base_batch=128,
        expert_steps=1000,
        expert_lr=2e-3,
        lora_lr=5e-3,
        expert_batch=128,
        lora_rank=8,
        lora_alpha=16.0,
    ),
}


def zoo_spec(modality: str, size: str = "default", seed: int = 0) -> ZooSpec:
    """The documented preset of a modality and size (see ``docs/zoo.md``).

    Args:
      modality: ``"language"`` or ``"vision"``.
      size: ``"tiny"``, ``"default"`` or ``"large"``.
      seed: the zoo's seed.

    Returns:
      :class:`ZooSpec`.

    Example:
      >>> zoo_spec("language", "tiny").tasks
      ('pydoc_data', 'encodings', 'tkinter', 'xml')
    """
    if (modality, size) not in _PRESETS:
        raise ValueError(f"zoo_spec: modality must be one of {MODALITIES} and size one of {SIZES}")
    return ZooSpec(modality=modality, size=size, seed=seed, **_PRESETS[(modality, size)])


def _validate(spec: ZooSpec) -> None:
    if spec.modality not in MODALITIES:
        raise ValueError(f"ZooSpec.modality: {spec.modality!r} is not one of {MODALITIES}")
    if not spec.tasks or len(set(spec.tasks)) != len(spec.tasks):
        raise ValueError("ZooSpec.tasks: need at least one task and no duplicates")
    for name in ("lora_rank", "base_steps", "expert_steps", "base_batch", "expert_batch"):
        if getattr(spec, name) < 1:
            raise ValueError(f"ZooSpec.{name} must be >= 1, got {getattr(spec, name)}")


class ExpertZoo(NamedTuple):
    """A base model, its experts (full and LoRA) and their metrics (see the module doc).

    Attributes:
      spec: the :class:`ZooSpec`.
      task_names: the ``T`` task names.
      base_params: nested dict of float32 arrays, :math:`\\theta_0`.
      full_task_vectors: same structure, leaves ``[T, ...]``, :math:`\\theta_t - \\theta_0`.
      lora_factors: ``{path: LoraFactors(B [T, d_out, r], A [T, r, d_in], alpha / r)}``,
        ``path`` the ``"/"``-joined path of the adapted kernel in ``base_params``.
      metric_name: ``"bits_per_byte"`` or ``"accuracy"``.
      higher_is_better: False for bits per byte, True for accuracy.
      base_metric: ``[T]`` base on each task's test split.
      full_expert_metric: ``[T]`` full expert ``t`` on task ``t`` (test).
      lora_expert_metric: ``[T]`` LoRA expert ``t`` on task ``t`` (test).
      base_knowledge: ``[T]`` the base's metric on each task (equal to ``base_metric``).
      info: config, fingerprint, data provenance, timings, parameter counts.
    """

    spec: ZooSpec
    task_names: tuple[str, ...]
    base_params: Any
    full_task_vectors: Any
    lora_factors: dict[str, LoraFactors]
    metric_name: str
    higher_is_better: bool
    base_metric: np.ndarray
    full_expert_metric: np.ndarray
    lora_expert_metric: np.ndarray
    base_knowledge: np.ndarray
    info: dict


# --------------------------------------------------------------------------------------
# data, fingerprint
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def zoo_data(spec: ZooSpec) -> ZooData:
    """The :class:`~mergetheory.models.zoo_data.ZooData` of a spec (cached per process)."""
    _validate(spec)
    if spec.modality == "language":
        return language_data(
            spec.tasks,
            seed=spec.seed,
            context=spec.context,
            num_eval_windows=spec.num_eval_windows,
            holdout=spec.holdout,
        )
    return vision_data(spec.tasks, seed=spec.seed)


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _CODE_FILES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def zoo_fingerprint(spec: ZooSpec) -> str:
    """Cache key: SHA-256 (16 hex digits) of the spec, data hash, code version, x64 flag."""
    payload = {
        "spec": spec._asdict(),
        "data_sha256": zoo_data(spec).sha256,
        "code_version": _code_version(),
        "x64": bool(jax.config.jax_enable_x64),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_config(spec: ZooSpec) -> TrainConfig:
    """The model family of a spec (static argument of the jitted training/eval programs)."""
    return TrainConfig(
        modality=spec.modality,
        num_heads=spec.num_heads,
        context=spec.context,
        lora_scaling=spec.lora_alpha / spec.lora_rank,
    )


# --------------------------------------------------------------------------------------
# build / load
# --------------------------------------------------------------------------------------


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    from ..io import unflatten_tree

    return unflatten_tree(flat, sep="/")


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _train_zoo(spec: ZooSpec, data: ZooData, progress: bool) -> tuple[dict, dict]:
    cfg = train_config(spec)
    k_init, k_base, k_full, k_lora_init, k_lora = jr.split(jr.key(spec.seed), 5)
    timings: dict[str, Any] = {"loadavg_start": _loadavg(), "device": str(jax.devices()[0])}
    t0, cpu0 = time.perf_counter(), time.process_time()
    params0 = init_params(k_init, spec)
    base, base_losses = train(
        cfg, params0, k_base, data.base_train, spec, stage="base", progress=progress
    )
    jax.block_until_ready(base)  # honest stage timings (async dispatch)
    t1 = time.perf_counter()
    num_tasks = len(spec.tasks)
    full, full_losses = train(
        cfg, base, jr.split(k_full, num_tasks), data.task_train, spec, stage="full",
        progress=progress, replay=data.base_train,
    )  # fmt: skip
    jax.block_until_ready(full)  # honest stage timings (async dispatch)
    t2 = time.perf_counter()
    lora, lora_losses = train(
        cfg, base, (jr.split(k_lora_init, num_tasks), jr.split(k_lora, num_tasks)),
        data.task_train, spec, stage="lora", progress=progress, replay=data.base_train,
    )  # fmt: skip
    jax.block_until_ready(lora)  # honest stage timings (async dispatch)
    t3 = time.perf_counter()
    tv = jax.tree.map(lambda e, b: e - b[None], full, base)
    test = data.eval["test"]
    metrics = {
        "base": np.asarray(eval_tasks(cfg, base, test), np.float64),
        "full": np.asarray(eval_diagonal(cfg, full, test), np.float64),
        "lora": np.asarray(
            eval_diagonal(cfg, lora_expert_params(base, lora, scaling=cfg.lora_scaling), test),
            np.float64,
        ),
        "base_val": float(model_loss(cfg, base, data.base_val)),
    }
    t4 = time.perf_counter()
    timings.update(
        base_s=t1 - t0, full_s=t2 - t1, lora_s=t3 - t2, eval_s=t4 - t3, train_total_s=t4 - t0,
        cpu_s=time.process_time() - cpu0, loadavg_end=_loadavg(),
    )  # fmt: skip
    trees = {"base": base, "full": tv, "lora": _nest(lora)}
    extra = {
        "timings": timings,
        "metrics": metrics,
        "losses": {
            "base_first_last": [float(base_losses[0]), float(base_losses[-1])],
            "full_last": np.asarray(full_losses[:, -1], np.float64).tolist(),
            "lora_last": np.asarray(lora_losses[:, -1], np.float64).tolist(),
        },
    }
    return trees, extra


def _assemble(spec: ZooSpec, trees: dict, meta: dict) -> ExpertZoo:
    scaling = spec.lora_alpha / spec.lora_rank
    lora = {
        path: LoraFactors(B=f["B"], A=f["A"], scaling=scaling)
        for path, f in sorted(_flat_factors(trees["lora"]).items())
    }
    m = meta["metrics"]
    base_metric = np.asarray(m["base"], np.float64)
    language = spec.modality == "language"
    return ExpertZoo(
        spec=spec,
        task_names=tuple(spec.tasks),
        base_params=trees["base"],
        full_task_vectors=trees["full"],
        lora_factors=lora,
        metric_name="bits_per_byte" if language else "accuracy",
        higher_is_better=not language,
        base_metric=base_metric,
        full_expert_metric=np.asarray(m["full"], np.float64),
        lora_expert_metric=np.asarray(m["lora"], np.float64),
        base_knowledge=base_metric.copy(),
        info=meta["info"],
    )


def _flat_factors(tree: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    # the nested {..: {"B", "A"}} adapter tree back to {path: {"B", "A"}}
    if set(tree) == {"A", "B"}:
        return {prefix: tree}
    out: dict[str, dict[str, Any]] = {}
    for k, v in tree.items():
        out.update(_flat_factors(v, f"{prefix}/{k}" if prefix else k))
    return out


def build_zoo(
    spec: ZooSpec, *, cache_dir: str | os.PathLike[str] = "results/zoo", progress: bool = True
) -> ExpertZoo:
    """Train base + full and LoRA experts deterministically from ``spec``, or load the cache.

    The cache entry ``cache_dir/<zoo_fingerprint(spec)>/`` holds ``base/``, ``full/``,
    ``lora/`` (orbax) and ``zoo.json`` (metrics and ``info``); it is written into a
    temporary directory and renamed into place, so a crash never leaves a partial entry.

    Args:
      spec: the :class:`ZooSpec` (see :func:`zoo_spec` for the presets).
      cache_dir: where cache entries live.
      progress: show tqdm progress bars while training.

    Returns:
      :class:`ExpertZoo`; ``info["loaded_from_cache"]`` says whether it was trained now.
    """
    from ..io import load_orbax, save_orbax

    data = zoo_data(spec)
    fp = zoo_fingerprint(spec)
    entry = Path(cache_dir) / fp
    t0 = time.perf_counter()
    if (entry / "zoo.json").is_file():
        meta = json.loads((entry / "zoo.json").read_text())
        trees = {k: load_orbax(entry / k) for k in ("base", "full", "lora")}
        trees = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trees)
        meta["info"]["loaded_from_cache"] = True
        meta["info"]["load_s"] = time.perf_counter() - t0
        return _assemble(spec, trees, meta)

    trees, extra = _train_zoo(spec, data, progress)
    cfg = train_config(spec)
    n_base = sum(int(x.size) for x in jax.tree.leaves(trees["base"]))
    n_lora = sum(int(x[0].size) for x in jax.tree.leaves(trees["lora"]))
    info = {
        "fingerprint": fp,
        "spec": spec._asdict(),
        "code_version": _code_version(),
        "data_sha256": data.sha256,
        "data": data.info,
        "x64": bool(jax.config.jax_enable_x64),
        "lora_scaling": cfg.lora_scaling,
        "param_counts": {"base": n_base, "lora_per_expert": n_lora},
        "timings": extra["timings"],
        "losses": extra["losses"],
        "base_val_loss_nats": extra["metrics"]["base_val"],
        "loaded_from_cache": False,
    }
    metrics = {k: np.asarray(v).tolist() for k, v in extra["metrics"].items() if k != "base_val"}
    meta = {"metrics": metrics, "info": info}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fp}.", suffix=".tmp", dir=cache_dir))
    try:
        for k, tree in trees.items():
            save_orbax(tmp / k, tree)
        (tmp / "zoo.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process wrote the same entry first: keep theirs
            if not (entry / "zoo.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _assemble(spec, trees, meta)
