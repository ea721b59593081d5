r"""``mergetheory merge`` on PEFT LoRA adapters: a factor-wise merge written as an adapter folder.

When every input is a PEFT adapter folder, the registry operator merges the ``B`` factors
and the ``A`` factors separately (:func:`mergetheory.merge.lora_factorwise`, what the
released RHT code does: every LoRA tensor is merged on its own), each adapter's scaling
:math:`s_t = \alpha_t / r_t` folded into its ``B`` first, so adapters with different
``lora_alpha`` merge on the scale of their updates. The result is written as a PEFT
adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``, atomically) with
scaling 1 (``lora_alpha = r``; modules of another rank get ``rank_pattern`` /
``alpha_pattern`` entries), the first adapter's other config fields, and the adapters'
dtype unless ``--dtype`` says otherwise. Adapters are small: they are read whole.

The merged adapter's update is :math:`\bar B \bar A`, not the merge of the updates
:math:`s_t B_t A_t` (``mergetheory analyze`` studies those); for a linear operator the
difference is the cross terms :math:`\sum_{t \ne u} w_t w_u B_t A_u`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError, one_line

__all__ = ["merge_peft_adapters"]


def merge_peft_adapters(
    args: argparse.Namespace,
    op_name: str,
    op: Any,
    hparams: dict[str, Any],
    opened: list[Any],
    base: str | None,
    dtype: str | None,
) -> int:
    """Merge the PEFT adapters ``opened`` factor-wise and write ``args.out`` (module doc)."""
    import jax
    import jax.numpy as jnp
    import jax.tree_util as jtu
    import ml_dtypes

    from .._types import is_lora_factors
    from ..io import CheckpointError, load_peft_adapter, save_peft_adapter
    from ..io.pool import TaskVectorTensors, open_expert
    from ..merge import lora_factorwise

    try:
        base_opened = open_expert(base, step=args.step) if base is not None else None
        tensors = TaskVectorTensors(opened, base_opened)  # mixed kinds, a base: refused
        config = dict(load_peft_adapter(opened[0].path).config)
    except CheckpointError as exc:
        raise CliError(one_line(str(exc))) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    leaves = jtu.tree_leaves(tensors.factors, is_leaf=is_lora_factors)
    try:
        out_dtype = (
            np.dtype(leaves[0].B.dtype)
            if dtype is None
            else np.dtype(getattr(ml_dtypes, str(dtype), None) or str(dtype))
        )
    except TypeError:
        raise CliError(f"--dtype {dtype}: unknown dtype") from None
    wide = jtu.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), tensors.factors)
    try:
        merged = lora_factorwise(op.fn, wide, jax.random.key(args.seed), **hparams)
    except (ValueError, TypeError) as exc:
        raise CliError(one_line(str(exc))) from None
    flat = jtu.tree_flatten_with_path(merged, is_leaf=is_lora_factors)[0]
    modules, ranks = {}, {}
    for path, f in flat:
        name = ".".join(str(getattr(k, "key", k)) for k in path)
        s = float(np.asarray(f.scaling))
        b, a = s * np.asarray(f.B, np.float64), np.asarray(f.A, np.float64)
        if not (np.all(np.isfinite(b)) and np.all(np.isfinite(a))):
            raise CliError(f"the merged factors of {name!r} are not finite; {args.out} not written")
        modules[name] = (b.astype(out_dtype), a.astype(out_dtype))
        ranks[name] = b.shape[1]
    rank = max(ranks.values())
    other = {re.escape(m): r for m, r in ranks.items() if r != rank}
    drop = ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules")
    extra = {k: v for k, v in config.items() if k not in drop}
    extra.update(rank_pattern=other, alpha_pattern={k: float(r) for k, r in other.items()})
    try:
        save_peft_adapter(out, modules, r=rank, lora_alpha=float(rank), extra_config=extra)
    except OSError as exc:
        raise CliError(f"--out {args.out}: {exc.strerror or exc}") from None
    sys.stdout.write(
        f"merged {len(opened)} PEFT adapters factor-wise with {op_name} -> {out} "
        f"(PEFT adapter, {len(modules)} modules, {out_dtype})\n"
    )
    return 0
