"""The ``mergetheory merge`` subcommand: merge experts' task vectors with a registered operator.

Every input is one expert's task vector as an ``.npz`` file of named arrays (the same names
and shapes in every file); the output is the merged task vector as an ``.npz`` written
atomically::

    mergetheory merge --operator ties --density 0.2 --out merged.npz e1.npz e2.npz e3.npz

The built-in operator names are listed here without importing JAX (so that ``--help``
answers fast; ``tests/cli/test_cli_main.py`` checks them against
:data:`mergetheory.merge.BUILTIN_OPERATOR_NAMES`); operators of installed plugins (entry-point
group ``mergetheory.operators``) are found at run time from package metadata, also without
importing JAX or the plugin.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError, one_line

__all__ = ["BUILTIN_OPERATOR_NAMES", "HELP", "add_arguments", "run"]

HELP = "merge experts' task vectors (.npz files of named arrays) with a registered operator"

BUILTIN_OPERATOR_NAMES = (
    "average",
    "base_knowledge_weighted",
    "breadcrumbs",
    "dare_linear",
    "dare_ties",
    "emr",
    "iso_c",
    "iso_cts",
    "knots",
    "knots_dare_ties",
    "magnitude_prune",
    "model_stock",
    "rht",
    "task_arithmetic",
    "ties",
    "tsv_m",
)
"""The built-in operators, :data:`mergetheory.merge.BUILTIN_OPERATOR_NAMES` (kept JAX-free)."""


def _merge_operator_names() -> list[str]:
    """Built-in names plus the names installed plugins publish (metadata only, no import)."""
    from importlib import metadata

    plugins = {ep.name for ep in metadata.entry_points(group="mergetheory.operators")}
    return sorted(set(BUILTIN_OPERATOR_NAMES) | plugins)


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _hparam(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return name.strip(), cast(value)
        except ValueError:
            pass
    low = value.strip().lower()
    if low in ("true", "false"):
        return name.strip(), low == "true"
    return name.strip(), value.strip()


def _add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--operator",
        required=True,
        choices=_merge_operator_names(),
        metavar="NAME",
        help="a registered operator (built in or from an installed plugin): "
        + ", ".join(_merge_operator_names()),
    )
    p.add_argument("--out", required=True, metavar="OUT.npz", help="merged task vector (.npz)")
    p.add_argument(
        "inputs", nargs="+", metavar="IN.npz", help="one expert's task vector (named arrays) each"
    )
    p.add_argument("--density", type=float, help="fraction kept (ties, dare_*, rht, ...)")
    p.add_argument("--scale", type=float, help="global scale lambda")
    p.add_argument(
        "--temperature", type=float, help="softmax temperature (base_knowledge_weighted)"
    )
    p.add_argument("--weights", type=_float_list, metavar="W1,W2,...", help="per-expert weights")
    p.add_argument(
        "--base-accuracy",
        type=_float_list,
        metavar="A1,A2,...",
        help="base model accuracy on each expert's task (base_knowledge_weighted)",
    )
    p.add_argument(
        "--hparam",
        type=_hparam,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other keyword hyperparameter of the operator (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0, help="key = jax.random.key(S) (stochastic ops)")


def _load_expert(path: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{path}: no such file")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:  # zipfile / pickle / OS errors: a corrupt or foreign file
        raise CliError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
    if not arrays:
        raise CliError(f"{path}: contains no arrays")
    for k, a in arrays.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise CliError(f"{path}: key {k!r} has dtype {a.dtype}, expected a float array")
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise CliError(f"{path}: key {k!r} has {bad} NaN/Inf value(s)")
    return arrays


def _stack_experts(paths: Sequence[str]) -> dict[str, np.ndarray]:
    experts = [_load_expert(p) for p in paths]
    ref, ref_path = experts[0], paths[0]
    for path, ex in zip(paths[1:], experts[1:], strict=True):
        missing = sorted(set(ref) - set(ex))
        extra = sorted(set(ex) - set(ref))
        if missing or extra:
            what = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
            raise CliError(f"{path}: {what} (keys must match {ref_path})")
        for k in ref:
            if ex[k].shape != ref[k].shape:
                raise CliError(
                    f"{path}: key {k!r} has shape {ex[k].shape}, but {ref_path} has {ref[k].shape}"
                )
    dtype = np.result_type(*[a.dtype for ex in experts for a in ex.values()])
    return {k: np.stack([ex[k] for ex in experts]).astype(dtype) for k in ref}


def _run_merge(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # keep float64 inputs float64
    import jax.numpy as jnp

    from ..merge import PluginError, get_operator

    try:
        op = get_operator(args.operator)
    except PluginError as exc:  # a broken installed plugin
        raise CliError(one_line(exc)) from None
    stacked = _stack_experts(args.inputs)
    num = len(args.inputs)
    hparams: dict[str, Any] = dict(op.default_hparams)
    for name in ("density", "scale", "temperature"):
        if getattr(args, name) is not None:
            hparams[name] = getattr(args, name)
    hparams.update(dict(args.hparam))
    for flag, name in (("weights", "weights"), ("base_accuracy", "base_accuracy")):
        values = getattr(args, flag)
        if values is None:
            continue
        if len(values) != num:
            raise CliError(f"--{flag.replace('_', '-')} has {len(values)} values for {num} inputs")
        hparams[name] = jnp.asarray(values, dtype=jnp.float64)
    for need in op.needs:
        if need not in hparams:
            raise CliError(f"operator {args.operator!r} needs --{need.replace('_', '-')}")
    if "weights" in hparams and not op.has_weights:
        raise CliError(f"operator {args.operator!r} takes no weights")
    tv = {k: jnp.asarray(v) for k, v in stacked.items()}
    try:
        merged = op.fn(tv, jax.random.key(args.seed), **hparams)
    except (ValueError, TypeError) as exc:  # library validation: bad hyperparameters
        raise CliError(one_line(exc)) from None
    out = {k: np.asarray(v) for k, v in merged.items()}
    from ..io.atomic import atomic_write

    with atomic_write(args.out) as fh:  # temp file + rename: never a half-written result
        np.savez(fh, **out)
    sys.stdout.write(
        f"merged {num} experts with {args.operator} -> {args.out} "
        f"({len(out)} arrays, {sum(v.size for v in out.values())} parameters)\n"
    )
    return 0


add_arguments = _add_merge_arguments
run = _run_merge
