r"""PEFT LoRA adapter directories <-> per-module :class:`~mergetheory.lora.LoraFactors`.

A PEFT adapter is a directory holding ``adapter_model.safetensors`` and
``adapter_config.json``: :func:`load_peft_adapter` returns the per-module factors
:class:`mergetheory.lora.LoraFactors` ``(B [d_out, r], A [r, d_in], s)`` with PEFT's
scaling :math:`s = \alpha / r` (rsLoRA: :math:`s = \alpha / \sqrt{r}`), so that the dense
update of a module is :math:`\Delta W = s\, B A`; :func:`stack_peft_adapters` stacks
``T`` adapters into the ``[T, ...]`` factored expert set that
:func:`mergetheory.lora.lora_gram_matrix` takes. :func:`save_peft_adapter` writes the
same layout (used by the tests to build fake adapters).

Reference: Hu et al., "LoRA" (``hu2022lora``); Kalajdzievski, "rsLoRA" (``kalajdzievski2023rslora``)
in ``paper/refs.bib``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import is_lora_factors
from ..lora import LoraFactors
from .atomic import atomic_write_dir
from .common import CheckpointError, PathLike, require_exists
from .flat import unflatten_tree
from .safetensors import load_safetensors, save_safetensors

__all__ = [
    "PEFT_CONFIG_NAME",
    "PEFT_WEIGHTS_NAME",
    "PeftAdapter",
    "load_peft_adapter",
    "peft_dense_update",
    "save_peft_adapter",
    "stack_peft_adapters",
]

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class PeftAdapter(NamedTuple):
    """A PEFT LoRA adapter read from disk.

    Attributes:
      factors: nested dict (module path split on ``"."``) of
        :class:`mergetheory.lora.LoraFactors` ``(B [d_out, r], A [r, d_in], scaling)``
        with a Python-float ``scaling``; the dense update of a module is ``scaling * B @ A``.
      config: the parsed ``adapter_config.json``.
      path: the adapter directory.
    """

    factors: dict[str, Any]
    config: dict[str, Any]
    path: Path


def _pattern_lookup(module: str, pattern: Mapping[str, Any], default: Any) -> Any:
    r"""PEFT's ``rank_pattern`` / ``alpha_pattern``: the key matching the module's name end.

    As PEFT: a key matches when ``(.*\.)?(key)$`` matches the whole module name, so a key
    may be a regex alternation (``"fc1|fc2"``) or a dotted suffix (``"layers.0.fc1"``).
    """
    for key, val in pattern.items():
        if re.fullmatch(rf"(.*\.)?({key})", module):
            return val
    return default


def _peft_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return float(alpha) / (math.sqrt(r) if use_rslora else float(r))


def _load_peft_config(path: Path) -> dict[str, Any]:
    cfg_path = path / PEFT_CONFIG_NAME
    require_exists(cfg_path, kind="PEFT adapter config", is_dir=False)
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt PEFT adapter config {cfg_path}: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"PEFT adapter config {cfg_path} is not a JSON object")
    for field in ("r", "lora_alpha"):
        if field not in cfg:
            raise CheckpointError(f"PEFT adapter config {cfg_path} has no {field!r} field")
    if not isinstance(cfg["r"], int) or cfg["r"] < 1:
        raise CheckpointError(f"PEFT adapter config {cfg_path}: r must be a positive int")
    return cfg


def load_peft_adapter(path: PathLike, *, check_finite: bool = True) -> PeftAdapter:
    r"""Read a PEFT LoRA adapter directory into per-module factors with PEFT's scaling.

    The directory holds ``adapter_model.safetensors`` with keys
    ``base_model.model.<module>.lora_A.weight`` ``[r, d_in]`` and
    ``base_model.model.<module>.lora_B.weight`` ``[d_out, r]`` (an adapter-name infix such
    as ``lora_A.default.weight`` is accepted), and ``adapter_config.json`` with ``r``,
    ``lora_alpha``, ``use_rslora`` (and optionally ``rank_pattern`` / ``alpha_pattern``).
    The scaling of a module of rank :math:`r` is

    .. math::  s = \alpha / r \quad\text{(LoRA)}, \qquad s = \alpha / \sqrt{r}
               \quad\text{(rsLoRA)},

    and its dense update is :math:`\Delta W = s\,B A \in \mathbb{R}^{d_{out} \times d_{in}}`.

    Args:
      path: the adapter directory.
      check_finite: reject NaN / Inf factors.

    Returns:
      :class:`PeftAdapter` whose ``factors`` nest the module path on ``"."``, e.g.
      ``factors["model"]["layers"]["0"]["self_attn"]["q_proj"]``.

    Raises:
      CheckpointError: missing files, corrupt files, keys that are not LoRA factors, a
        module with only one factor, or ranks that disagree with the config.
    """
    path = Path(path).absolute()
    require_exists(path, kind="PEFT adapter directory", is_dir=True)
    cfg = _load_peft_config(path)
    weights = path / PEFT_WEIGHTS_NAME
    flat = load_safetensors(weights, check_finite=check_finite)
    if not flat:
        raise CheckpointError(f"PEFT adapter {weights} holds no tensors")
    use_rslora = bool(cfg.get("use_rslora", False))
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in flat.items():
        name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
        m = _PEFT_KEY.match(name)
        if m is None:
            raise CheckpointError(
                f"PEFT adapter {weights}: key {key!r} is not a LoRA factor "
                "(expected '<module>.lora_A.weight' or '<module>.lora_B.weight')"
            )
        if arr.ndim != 2:
            raise CheckpointError(
                f"PEFT adapter {weights}: {key!r} has shape {arr.shape}, expected a matrix"
            )
        parts.setdefault(m["module"], {})[m["which"]] = arr
    modules: dict[str, LoraFactors] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise CheckpointError(f"PEFT adapter {weights}: module {module} has no lora_{missing}")
        a, b = ab["A"], ab["B"]
        r = int(_pattern_lookup(module, rank_pattern, cfg["r"]))
        alpha = float(_pattern_lookup(module, alpha_pattern, cfg["lora_alpha"]))
        if a.shape[0] != r or b.shape[1] != r:
            raise CheckpointError(
                f"PEFT adapter {weights}: module {module} has lora_A {a.shape} and lora_B "
                f"{b.shape}, but the config says r = {r}"
            )
        modules[module] = LoraFactors(b, a, _peft_scaling(r, alpha, use_rslora))
    nested = unflatten_tree(modules)
    return PeftAdapter(factors=nested, config=cfg, path=path)


def save_peft_adapter(
    path: PathLike,
    modules: Mapping[str, tuple[Any, Any]],
    *,
    r: int,
    lora_alpha: float,
    use_rslora: bool = False,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PEFT-layout LoRA adapter directory (safetensors + config), atomically.

    Args:
      path: the adapter directory to create.
      modules: ``{module path: (B [d_out, r], A [r, d_in])}``.
      r: the config's rank.
      lora_alpha: the config's alpha.
      use_rslora: the config's rsLoRA flag.
      extra_config: more config fields (``target_modules``, ``rank_pattern``, ...).

    Returns:
      The absolute directory path.
    """
    path = Path(path).absolute()
    tensors = {}
    targets = set()
    for module, (b, a) in modules.items():
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = np.asarray(a)
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = np.asarray(b)
        targets.add(module.rsplit(".", 1)[-1])
    cfg = {
        "peft_type": "LORA",
        "r": int(r),
        "lora_alpha": lora_alpha,
        "use_rslora": bool(use_rslora),
        "target_modules": sorted(targets),
    }
    cfg.update(extra_config or {})

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_safetensors(tmp / PEFT_WEIGHTS_NAME, tensors)
        (tmp / PEFT_CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True))

    atomic_write_dir(path, write)
    return path


def peft_dense_update(
    adapter: PeftAdapter | Mapping[str, Any], *, fan_in_fan_out: bool | None = None
) -> dict[str, Any]:
    r"""Dense per-module updates :math:`\Delta W = s\,B A` of one adapter, in the base's layout.

    The update is ``[d_out, d_in]`` (``torch.nn.Linear``'s weight layout); with PEFT's
    ``fan_in_fan_out`` (GPT-2's ``Conv1D``, weight ``[d_in, d_out]``) it is transposed,
    :math:`\Delta W = s\,(B A)^\top`, as PEFT adds it to the weight.

    Args:
      adapter: a :class:`PeftAdapter` or its ``factors`` tree (unstacked, ``B [d, r]``).
      fan_in_fan_out: transpose to ``[d_in, d_out]``; default: the adapter config's
        ``fan_in_fan_out`` (``False`` for a bare factors tree).

    Returns:
      The same nested dict with every :class:`~mergetheory.lora.LoraFactors` replaced by
      its dense update (NumPy, float64 for float inputs up to float64).
    """
    factors = adapter.factors if isinstance(adapter, PeftAdapter) else adapter
    if fan_in_fan_out is None:
        cfg = adapter.config if isinstance(adapter, PeftAdapter) else {}
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))

    def one(f: LoraFactors) -> np.ndarray:
        b = np.asarray(f.B)
        a = np.asarray(f.A)
        dense = np.asarray(f.scaling, dtype=np.result_type(b, a)) * (b @ a)
        return dense.T if fan_in_fan_out else dense

    return jtu.tree_map(one, factors, is_leaf=is_lora_factors)


def stack_peft_adapters(adapters: Sequence[PeftAdapter | PathLike]) -> dict[str, Any]:
    r"""Stack ``T`` adapters of the same modules into a factored expert set.

    Ranks may differ between adapters: factors are zero-padded to the largest rank of each
    module, which leaves every :math:`s\,B A` unchanged.

    Args:
      adapters: :class:`PeftAdapter` objects or adapter directories.

    Returns:
      Nested dict of :class:`~mergetheory.lora.LoraFactors` ``(B [T, d, r], A [T, r, k],
      scaling [T])``, the input of :func:`mergetheory.lora.lora_gram_matrix` and
      :func:`mergetheory.lora.densify`.

    Raises:
      CheckpointError: no adapters, or adapters whose modules / shapes differ (naming the
        module and the adapter directory).
    """
    if len(adapters) == 0:
        raise CheckpointError("stack_peft_adapters: the list of adapters is empty")
    loaded = [a if isinstance(a, PeftAdapter) else load_peft_adapter(a) for a in adapters]
    ref = loaded[0]
    ref_flat = jtu.tree_flatten_with_path(ref.factors, is_leaf=is_lora_factors)[0]
    ref_names = [jtu.keystr(tuple(p)) for p, _ in ref_flat]
    per_module: list[list[LoraFactors]] = [[f] for _, f in ref_flat]
    for ad in loaded[1:]:
        flat = jtu.tree_flatten_with_path(ad.factors, is_leaf=is_lora_factors)[0]
        names = [jtu.keystr(tuple(p)) for p, _ in flat]
        if names != ref_names:
            diff = sorted(set(names) ^ set(ref_names))
            raise CheckpointError(
                f"PEFT adapter {ad.path} adapts different modules than {ref.path} "
                f"(first difference: {diff[0] if diff else 'order'})"
            )
        for i, (_, f) in enumerate(flat):
            f0 = per_module[i][0]
            if f.B.shape[0] != f0.B.shape[0] or f.A.shape[1] != f0.A.shape[1]:
                raise CheckpointError(
                    f"PEFT adapter {ad.path}: module {ref_names[i]} is "
                    f"{f.B.shape[0]}x{f.A.shape[1]} but {f0.B.shape[0]}x{f0.A.shape[1]} "
                    f"in {ref.path}"
                )
            per_module[i].append(f)

    def stack(fs: list[LoraFactors]) -> LoraFactors:
        r = max(f.A.shape[0] for f in fs)
        bs = [np.pad(np.asarray(f.B), ((0, 0), (0, r - f.B.shape[1]))) for f in fs]
        as_ = [np.pad(np.asarray(f.A), ((0, r - f.A.shape[0]), (0, 0))) for f in fs]
        dtype = np.result_type(*bs, *as_)
        scaling = np.asarray([f.scaling for f in fs], dtype=dtype)
        return LoraFactors(
            jnp.asarray(np.stack(bs).astype(dtype)),
            jnp.asarray(np.stack(as_).astype(dtype)),
            jnp.asarray(scaling),
        )

    treedef = jtu.tree_structure(ref.factors, is_leaf=is_lora_factors)
    return jtu.tree_unflatten(treedef, [stack(fs) for fs in per_module])
