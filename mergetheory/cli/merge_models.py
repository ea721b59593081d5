"""``mergetheory merge`` on model folders and mergekit configs: a per-tensor streaming merge.

When the inputs are Hugging Face model folders / ``.safetensors`` files (with ``--base``),
a mergekit YAML (``--config``), or any dense inputs with ``--per-tensor`` (orbax, msgpack,
npz too), the merge runs tensor by tensor: for each tensor name the ``n`` experts' copies
are read (one tensor of each), the task vectors :math:`\\tau_t = \\theta_t - \\theta_0`
stacked ``[n, ...]``, the registry operator applied to that one tensor, and
:math:`\\theta_0 + \\tau` handed to the writer of the output's format
(:mod:`.merge_output`): the format ``--out``'s suffix names, else the base's own: an orbax
checkpoint for orbax inputs, otherwise a model folder (``model.safetensors``, or shards
``model-0000k-of-0000m.safetensors`` with ``model.safetensors.index.json`` when larger
than ``--max-shard-size``; ``config.json`` copied from the base). The dtype is the base's
unless ``--dtype`` / the config's ``dtype`` says otherwise. mergekit merges tensor by
tensor too.

:data:`MERGEKIT_METHODS` is the one table of which mergekit ``merge_method`` maps to which
registry operator and hyperparameters (``docs/mergekit.md`` explains it); anything else is
refused with the list of supported methods. PEFT adapter inputs are merged factor-wise
into an adapter folder (:mod:`.merge_peft`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError, one_line
from .merge_output import check_out, open_writer, output_format, write_all
from .merge_peft import merge_peft_adapters
from .merge_stream import block_options, merged_tensors

__all__ = ["MERGEKIT_METHODS", "MERGEKIT_OPTIONS", "MERGEKIT_SWITCHES", "merge_models"]

MERGEKIT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {"scale": 1.0}),
    "ties": (
        "ties",
        {
            "weights_before_election": True,
            "aggregate": "weighted_mean",
            "scale": 1.0,
            "density": 1.0,
        },
    ),
    "dare_ties": (
        "dare_ties",
        {"weights_before_election": True, "aggregate": "sum", "scale": 1.0, "density": 1.0},
    ),
    "breadcrumbs": (
        "breadcrumbs",
        {"scope": "tensor", "scale": 1.0, "beta": 1.0, "gamma": 0.01},
    ),
    "model_stock": ("model_stock", {}),
}
"""mergekit ``merge_method`` -> (registry operator, hyperparameters at mergekit's defaults)."""

MERGEKIT_OPTIONS: dict[str, str] = {"density": "density", "lambda": "scale", "gamma": "gamma"}
"""mergekit parameters -> registry hyperparameter names (``weight`` becomes ``weights``;
for ``breadcrumbs`` mergekit's ``density``, the fraction kept, is the registry's ``beta``).
mergekit's ``density`` defaults to 1 (keep everything), not to the registry's default."""

MERGEKIT_SWITCHES: dict[str, dict[str, dict[Any, dict[str, Any]]]] = {
    "linear": {"normalize": {True: {}}},
    "task_arithmetic": {"normalize": {False: {}}},
    "ties": {
        "normalize": {True: {}, False: {"aggregate": "sum"}},
        "rescale": {False: {}},
    },
    "dare_ties": {
        "normalize": {False: {}, True: {"aggregate": "weighted_mean"}},
        "rescale": {True: {}},
    },
    "breadcrumbs": {"normalize": {False: {}}, "rescale": {False: {}}},
    "model_stock": {"filter_wise": {False: {}, True: {"granularity": "row"}}},
}
"""mergekit's boolean switches per method: each supported value -> the registry
hyperparameters it sets (the first value listed is mergekit's default). ``int8_mask``
(the dtype of mergekit's sign mask, not its values) is accepted either way for the
sign-electing methods."""

_INT8_MASK = ("ties", "dare_ties", "task_arithmetic", "breadcrumbs")


def _mergekit_models(cfg: Any) -> tuple[list[Any], list[dict[str, Any]], Any]:
    r"""The experts, their parameters and the origin of the task vectors.

    mergekit's ``linear`` averages every input, ``base_model`` included (with its own
    ``weight``, so it must be listed in ``models``); its origin is then the first model
    (:math:`\sum_t w_t\theta_t / \sum_t w_t = \theta_1 + \sum_t w_t(\theta_t -
    \theta_1) / \sum_t w_t`). The other methods merge task vectors from ``base_model``.
    """
    models, params = list(cfg.models), list(cfg.model_parameters)
    if cfg.merge_method != "linear":
        return models, params, cfg.base_model
    if cfg.base_model is not None:
        if cfg.base_parameters is None:
            raise CliError(
                f"{cfg.path}: linear averages base_model too: list it in models with its "
                "weight (as mergekit requires)"
            )
        models, params = [cfg.base_model, *models], [cfg.base_parameters, *params]
    return models, params, models[0]


def _mergekit_hparams(cfg: Any) -> tuple[str, dict[str, Any], list[float] | None, str | None]:
    method = cfg.merge_method
    if method not in MERGEKIT_METHODS:
        raise CliError(
            f"{cfg.path}: merge_method {method!r} is not supported "
            f"(supported: {', '.join(sorted(MERGEKIT_METHODS))})"
        )
    op, fixed = MERGEKIT_METHODS[method]
    hparams: dict[str, Any] = dict(fixed)
    weights = None
    per_model: dict[str, list[Any]] = {}
    models, model_params, _ = _mergekit_models(cfg)
    for p in model_params:
        for k, v in p.items():
            per_model.setdefault(k, []).append(v)
    if "weight" in per_model:
        if len(per_model["weight"]) != len(models):
            raise CliError(f"{cfg.path}: 'weight' must be given for every model or none")
        weights = [float(w) for w in per_model.pop("weight")]
    params = dict(cfg.parameters)
    for k, vals in per_model.items():
        if len(set(map(repr, vals))) != 1 or len(vals) != len(models):
            raise CliError(f"{cfg.path}: per-model {k!r} must be the same for every model")
        params.setdefault(k, vals[0])
    switches = MERGEKIT_SWITCHES[method]
    for k, v in params.items():
        if k == "int8_mask" and method in _INT8_MASK and isinstance(v, bool):
            continue
        if k in switches:
            if v not in switches[k] or not isinstance(v, bool):
                ok = " or ".join(f"{k}: {x}" for x in switches[k])
                raise CliError(f"{cfg.path}: {k}: {v} is not supported for {method} (only {ok})")
            hparams.update(switches[k][v])
            continue
        if k not in MERGEKIT_OPTIONS or k in ("normalize", "rescale", "int8_mask"):
            raise CliError(f"{cfg.path}: parameter {k!r} of {method} is not supported")
        name = "beta" if (op, k) == ("breadcrumbs", "density") else MERGEKIT_OPTIONS[k]
        hparams[name] = v
    return op, hparams, weights, cfg.dtype


def merge_models(args: argparse.Namespace, check_hparams: Any) -> int:
    """Run the streaming merge of ``args`` (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    from ..io import CheckpointError
    from ..io.mergekit import load_mergekit_config
    from ..io.pool import DenseExpert, LoraExpert, check_same_tensors, open_expert
    from ..merge import get_operator

    experts, base, weights, dtype = list(args.inputs), args.base, args.weights, args.dtype
    op_name = args.operator
    hparams: dict[str, Any] = {}
    try:
        if args.config:
            cfg = load_mergekit_config(args.config)
            op_name, hparams, cfg_weights, cfg_dtype = _mergekit_hparams(cfg)
            models, _, origin = _mergekit_models(cfg)
            experts = [str(p) for p in models]
            base = base or (str(origin) if origin else None)
            weights = weights or cfg_weights
            dtype = dtype or cfg_dtype
        if op_name is None:
            raise CliError("give --operator (or --config with a merge_method)")
        opened = [open_expert(p, step=args.step, fmt=args.format) for p in experts]
        peft = any(isinstance(e, LoraExpert) for e in opened)
        if base is None and not peft:
            raise CliError("merging model folders needs --base (or base_model in --config)")
        op = get_operator(op_name)
        hparams = {**op.default_hparams, **hparams}
        for name in ("density", "scale", "temperature"):
            if getattr(args, name) is not None:
                hparams[name] = getattr(args, name)
        hparams.update(dict(args.hparam))
        check_hparams(op_name, hparams)
        if weights is not None:
            if len(weights) != len(experts) or not all(math.isfinite(w) for w in weights):
                raise CliError(f"weights {weights}: need {len(experts)} finite values")
            hparams["weights"] = jnp.asarray(weights, jnp.float64)
        for need in op.needs:
            if need not in hparams:
                raise CliError(f"operator {op_name!r} needs --{need.replace('_', '-')}")
        if peft:
            return merge_peft_adapters(args, op_name, op, hparams, opened, base, dtype)
        theta0 = open_expert(base, step=args.step, fmt=args.format)
        if not all(isinstance(e, DenseExpert) for e in [theta0, *opened]):
            raise CliError("the pool mixes PEFT adapters and dense models")
        for ex in opened:
            check_same_tensors(theta0, ex)
    except CheckpointError as exc:
        raise CliError(one_line(str(exc))) from None
    fmt = output_format(args.out, theta0.fmt, folders=True)
    out = check_out(args.out, fmt)
    names = theta0.names
    out_dtypes = {}
    for n in names:
        if dtype is None:
            out_dtypes[n] = theta0.dtype(n)
        else:
            try:
                out_dtypes[n] = np.dtype(getattr(ml_dtypes, str(dtype), None) or str(dtype))
            except TypeError:
                raise CliError(f"--dtype {dtype}: unknown dtype") from None
    spec = {n: (theta0.shape(n), out_dtypes[n]) for n in names}
    same = fmt == theta0.fmt  # the base's own format: its tree is kept
    writer = open_writer(
        fmt,
        out,
        spec,
        {n: theta0.key_path(n) for n in names} if same else None,
        scalars={n: k for n in names if (k := theta0.scalar_kind(n))},
        max_shard_size=args.max_shard_size,
        config_from=Path(base) / "config.json" if Path(base).is_dir() else None,
    )
    key = jax.random.key(args.seed)
    order = {n: i for i, n in enumerate(names)}  # sorted: the whole tree's flatten order
    keyed = op.stochastic and op.per_tensor is not None

    def merge_one(name: str, x: np.ndarray) -> Any:
        try:
            k = jax.random.fold_in(key, order[name])
            if keyed:  # the key tensor `name` has in the whole-tree merge (per-leaf keys)
                k = {"t": k}
            tau = op.fn({"t": jnp.asarray(x)}, k, **hparams)
        except (ValueError, TypeError) as exc:
            raise CliError(one_line(str(exc))) from None
        return tau["t"]

    merged = merged_tensors(
        writer.order,
        opened,
        theta0,
        merge_one,
        out_dtypes=out_dtypes,
        labels=experts,
        wide=True,
        **block_options(op_name, hparams),
        what=str(args.out),
    )
    write_all(writer, merged, args.out)
    files = f"{len(writer.shards)} file(s)" if fmt == "hf" else fmt
    sys.stdout.write(
        f"merged {len(opened)} models with {op_name} -> {out} ({len(names)} tensors, {files})\n"
    )
    return 0
