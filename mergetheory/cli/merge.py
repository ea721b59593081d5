"""The ``mergetheory merge`` subcommand: merge experts' task vectors with a registered operator.

Every input is one expert's task vector of named arrays (the same names, shapes and dtypes
in every file) as an ``.npz``, ``.safetensors`` (bfloat16 included) or ``.msgpack`` file or
an orbax directory (a ``CheckpointManager`` root or step folder too: ``--step``); with
``--base`` the inputs are full fine-tuned models and the task vectors are
:math:`\theta_t - \theta_0`. The output is the merged task vector (or, with ``--base``,
the merged model :math:`\theta_0 + \tau`) in the format its suffix names (``.npz``,
``.safetensors``, ``.msgpack``; for orbax inputs a folder name without one of these
suffixes is written as an orbax checkpoint, the inputs' format), atomically; written in
the inputs' format, it keeps their tree (Flax ``value`` wrappers included).
``--per-tensor`` (and model folders, ``--config``) streams every operator, one tensor of
every expert at a time (:mod:`.merge_models`), whatever the input format::

    mergetheory merge --operator ties --density 0.2 --out merged.npz e1.npz e2.npz e3.npz

``.safetensors``, ``.npz``, ``.msgpack`` and orbax inputs are merged tensor by tensor, one
tensor name's copies in memory at a time (:mod:`.merge_stream`), and written tensor by
tensor (:mod:`.merge_output`), for the operators whose tree merge is the merge of each
tensor alone (the registry's ``per_tensor`` claim, :func:`.merge_stream.is_streamable`);
the other operators (global trims, the heavy-tailed RHT) and ``.npy`` inputs load the
stacked tree. A stochastic operator's tensor is given the key it has in the whole tree.

Rules, one for the CLI and the library (:func:`mergetheory.io.validate_lineage`): all
inputs share names, shapes and dtypes (no silent promotion); leaves must be floating
(integer checkpoints are refused, not widened); hyperparameters must be finite and known
to the operator; the merged output must be finite; ``--out`` is checked before merging.


The built-in operator names are listed here without importing JAX (so that ``--help``
answers fast; ``tests/cli/test_cli_main.py`` checks them against
:data:`mergetheory.merge.BUILTIN_OPERATOR_NAMES`); operators of installed plugins (entry-point
group ``mergetheory.operators``) are found at run time from package metadata, also without
importing JAX or the plugin.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError, add_format_argument, one_line
from .merge_output import check_out, open_writer, output_format, write_all
from .merge_stream import is_streamable

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
    "rht_heavy_tailed",
    "task_arithmetic",
    "ties",
    "tsv_m",
)
"""The built-in operators, :data:`mergetheory.merge.BUILTIN_OPERATOR_NAMES` (kept JAX-free)."""

OPERATOR_HPARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "average": (),
    "base_knowledge_weighted": (
        ("base_accuracy", "required"),
        ("temperature", "0.1"),
        ("scale", "1.0"),
    ),
    "breadcrumbs": (("beta", "0.15"), ("gamma", "0.006"), ("scale", "0.2"), ("scope", "'row'")),
    "dare_linear": (("density", "0.5"), ("scale", "1.0")),
    "dare_ties": (
        ("density", "0.5"),
        ("scale", "1.0"),
        ("weights_before_election", "False"),
        ("election", "'mass'"),
        ("aggregate", "'mean'"),
        ("zero_sign", "'positive'"),
    ),
    "emr": (("sign_rule", "'code'"),),
    "iso_c": (("alpha", "1.0"),),
    "iso_cts": (("alpha", "1.0"), ("common_space_fraction", "0.8")),
    "knots": (("density", "0.2"), ("scale", "1.0"), ("trim_scope", "'global'")),
    "knots_dare_ties": (
        ("density", "0.9"),
        ("trim_density", "1.0"),
        ("scale", "1.0"),
        ("trim_scope", "'global'"),
    ),
    "magnitude_prune": (
        ("density", "0.2"),
        ("scale", "1.0"),
        ("trim", "'tensor'"),
        ("keep_rule", "'peft'"),
    ),
    "model_stock": (("cosine_average", "'cosines'"), ("granularity", "'tensor'")),
    "rht": (("density", "0.7"),),
    "rht_heavy_tailed": (("nu", "3.0"), ("scale", "1.0")),
    "task_arithmetic": (("scale", "1.0"),),
    "ties": (
        ("density", "0.2"),
        ("scale", "1.0"),
        ("trim", "'tensor'"),
        ("weights_before_election", "False"),
        ("election", "'mass'"),
        ("aggregate", "'mean'"),
        ("zero_sign", "'positive'"),
        ("keep_rule", "'peft'"),
    ),
    "tsv_m": (("alpha", "1.0"), ("sv_reduction", "None")),
}
"""Each operator's keyword hyperparameters (``weights`` aside) and the default the CLI
uses (``repr`` of ``default_hparams`` or of the signature default), kept JAX-free."""


def _hparams_epilog() -> str:
    from .merge_stream import STREAMED_OPERATORS

    lines = [
        "operators and their hyperparameters (defaults; set with --NAME or --hparam);",
        "[streamed]: merged one tensor at a time from files of any format (memory ~ n",
        "tensors); [whole tree]: every expert is loaded (a global trim, a whole-tree norm);",
        "--per-tensor streams any operator tensor by tensor:",
    ]
    for name in BUILTIN_OPERATOR_NAMES:
        hps = ", ".join(f"{k}={v}" for k, v in OPERATOR_HPARAMS[name]) or "(none)"
        need = STREAMED_OPERATORS.get(name)
        when = " with " + ", ".join(f"{k}={v!r}" for k, v in need.items()) if need else ""
        mode = "[whole tree]" if need is None else f"[streamed{when}]"
        lines.append(f"  {name}: {hps} {mode}")
    return "\n".join(lines)


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
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _hparams_epilog()
    p.add_argument(
        "--operator",
        choices=_merge_operator_names(),
        metavar="NAME",
        help="a registered operator (built in or from an installed plugin): "
        + ", ".join(_merge_operator_names()),
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="merged task vector (or model, with --base): .npz, .safetensors or .msgpack; "
        "a folder for model folders, --config and PEFT adapters (an adapter folder)",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="IN",
        help="one expert's task vector each (.npz, .safetensors, .msgpack, orbax directory)",
    )
    p.add_argument(
        "--base", metavar="BASE", help="base model: inputs are then fine-tuned models, not deltas"
    )
    p.add_argument("--step", type=int, help="orbax CheckpointManager step (default: latest)")
    add_format_argument(p)
    p.add_argument(
        "--config",
        metavar="MERGE.yml",
        help="mergekit YAML (models, base_model, merge_method, parameters, dtype); "
        "--out is then a model folder",
    )
    p.add_argument(
        "--per-tensor",
        action="store_true",
        help="stream any inputs and any operator (--base needed): the operator acts on one "
        "tensor at a time (operators marked [streamed] below already are); --out is "
        "written in its suffix's format, else an orbax checkpoint for orbax inputs and a "
        "model folder otherwise; memory ~ n tensors, not n models",
    )
    p.add_argument("--dtype", help="output dtype of a model-folder merge (default: the base's)")
    p.add_argument(
        "--max-shard-size",
        type=int,
        default=5 * 2**30,
        metavar="BYTES",
        help="model-folder output: shard above this size (with an index)",
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


def _is_float(dtype: np.dtype) -> bool:
    import jax.numpy as jnp

    return bool(jnp.issubdtype(dtype, jnp.floating))


def _check_float(path: str, arrays: dict[str, Any]) -> None:
    """Some arrays, all floating (``arrays`` may hold anything with a ``dtype``)."""
    if not arrays:
        raise CliError(f"{path}: contains no arrays")
    for k, a in arrays.items():
        if not _is_float(a.dtype):
            raise CliError(
                f"{path}: key {k!r} has dtype {a.dtype}, expected a float array "
                "(integer checkpoints are refused, not widened)"
            )


def _load_expert(
    path: str, step: int | None = None, fmt: str | None = None
) -> dict[str, np.ndarray]:
    """One input as flat named arrays; every failure is a one-line :class:`CliError`."""
    from ..io import CheckpointError, flatten_tree, load_checkpoint
    from ..io.npz import load_npz

    file = Path(path)
    if not file.exists():
        raise CliError(f"{path}: no such file")
    try:
        if (
            fmt is None
            and file.is_file()
            and file.suffix not in (".safetensors", ".msgpack", ".npy")
        ):
            arrays = load_npz(file, check_finite=False)
        else:
            arrays = flatten_tree(load_checkpoint(file, check_finite=False, step=step, fmt=fmt))
    except CheckpointError as exc:
        raise CliError(one_line(str(exc))) from None
    _check_float(path, arrays)
    for k, a in arrays.items():
        finite = np.isfinite(a.astype(np.float32) if a.dtype.itemsize < 4 else a)
        if not np.all(finite):
            raise CliError(
                f"{path}: key {k!r} has {int(finite.size - finite.sum())} NaN/Inf value(s)"
            )
    return arrays


def _check_same(ref: dict[str, np.ndarray], ex: dict[str, np.ndarray], path: str, ref_path: str):
    """The lineage rule of :func:`mergetheory.io.validate_lineage`: names, shapes, dtypes."""
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
        if ex[k].dtype != ref[k].dtype:
            raise CliError(
                f"{path}: key {k!r} has dtype {ex[k].dtype}, but {ref_path} has {ref[k].dtype} "
                "(mixed dtypes are refused, as by the library's lineage check)"
            )


def _stack_experts(
    paths: Sequence[str],
    base: dict[str, np.ndarray] | None = None,
    base_path: str = "",
    step: int | None = None,
    fmt: str | None = None,
) -> dict[str, np.ndarray]:
    ref, ref_path = (base, base_path) if base is not None else (None, paths[0])
    stacked: dict[str, list[np.ndarray]] = {}
    for path in paths:
        ex = _load_expert(path, step, fmt)
        if ref is None:
            ref = ex
        _check_same(ref, ex, path, ref_path)
        for k in ref:
            stacked.setdefault(k, []).append(ex[k] - base[k] if base is not None else ex[k])
    return {k: np.stack(v) for k, v in stacked.items()}


def _is_model_folder(path: str) -> bool:
    p = Path(path)
    names = (
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "adapter_config.json",  # PEFT adapters: merged factor-wise into an adapter folder
    )
    return bool(path) and p.is_dir() and any((p / n).is_file() for n in names)


def _known_hparams(op_name: str) -> set[str]:
    """The keyword hyperparameters of a built-in (static table) or plugin operator."""
    if op_name in OPERATOR_HPARAMS:
        return {k for k, _ in OPERATOR_HPARAMS[op_name]}
    import inspect

    from ..merge import get_operator

    params = inspect.signature(get_operator(op_name).fn).parameters.values()
    return {p.name for p in params if p.kind == p.KEYWORD_ONLY}


def _inf_ok(op_name: str, name: str, value: float) -> bool:
    """``+inf`` is accepted where it is the operator's identity value (``nu`` of heavy tails)."""
    from ..merge import get_operator

    return value == math.inf and get_operator(op_name).identity_hparams.get(name) == math.inf


def _check_hparams(op_name: str, hparams: dict[str, Any]) -> None:
    known = _known_hparams(op_name) | {"weights"}
    for name, value in hparams.items():
        if name not in known:
            listed = ", ".join(sorted(known - {"weights"})) or "none"
            raise CliError(
                f"operator {op_name!r} has no hyperparameter {name!r} (it takes: {listed})"
            )
        if (
            isinstance(value, float)
            and not math.isfinite(value)
            and not _inf_ok(op_name, name, value)
        ):
            raise CliError(f"hyperparameter {name}={value} is not a finite number")


LAZY_SUFFIXES = (".safetensors", ".npz", ".msgpack")
"""Input files read one tensor at a time by suffix (and orbax directories)."""


def _open_lazy(args: argparse.Namespace) -> list | None:
    """The inputs (and base) opened to be read one tensor at a time, with their headers
    checked (floating, same names / shapes / dtypes), or ``None`` when some input is
    another format (``.npy``, an unknown suffix, a missing path): then it is loaded whole,
    whose errors say what is wrong."""
    from ..io import CheckpointError
    from ..io.pool import open_expert

    paths = [*args.inputs, *([args.base] if args.base else [])]
    fmt = args.format
    if fmt not in (None, "safetensors", "npz", "msgpack", "orbax"):
        return None
    for p in map(Path, paths):
        if not p.exists() or (fmt is None and not (p.is_dir() or p.suffix in LAZY_SUFFIXES)):
            return None
    try:
        opened = [open_expert(p, step=args.step, fmt=fmt) for p in paths]
    except CheckpointError as exc:
        raise CliError(one_line(str(exc))) from None
    if not all(getattr(e, "lazy", False) for e in opened):
        return None
    heads = [
        {n: argparse.Namespace(shape=e.shape(n), dtype=e.dtype(n)) for n in e.names} for e in opened
    ]
    for path, head in zip(paths, heads, strict=True):
        _check_float(path, head)
    ref, ref_path = (heads[-1], args.base) if args.base else (heads[0], paths[0])
    for path, head in zip(args.inputs, heads, strict=False):
        _check_same(ref, head, path, ref_path)
    return opened


def _merge_streamed(
    args: argparse.Namespace, op: Any, hparams: dict[str, Any], opened: list, fmt: str
) -> int:
    """The merge tensor by tensor (:mod:`.merge_stream`), written as it goes."""
    import jax
    import jax.numpy as jnp

    from .merge_stream import block_options, merged_tensors

    num = len(args.inputs)
    experts, base = opened[:num], (opened[num] if args.base else None)
    ref = base if base is not None else experts[0]
    key = jax.random.key(args.seed)
    # a stochastic operator: each tensor gets the key it has in the whole-tree merge
    index = {n: i for i, n in enumerate(sorted(ref.names))} if op.stochastic else {}

    def merge_one(name: str, x: np.ndarray) -> Any:
        k = {name: jax.random.fold_in(key, index[name])} if name in index else key
        try:
            return op.fn({name: jnp.asarray(x)}, k, **hparams)[name]
        except (ValueError, TypeError) as exc:  # library validation: bad hyperparameters
            raise CliError(one_line(exc)) from None

    def out_dtype(dtype: np.dtype) -> np.dtype:
        if base is not None:
            return dtype  # (base + tau) in the base's dtype
        return np.dtype(merge_one("t", np.ones((num, 2), dtype)).dtype)  # a probe merge

    dtypes = {d: out_dtype(d) for d in {ref.dtype(n) for n in ref.names}}
    spec = {n: (ref.shape(n), dtypes[ref.dtype(n)]) for n in ref.names}
    same = {n: ref.key_path(n) for n in ref.names} if fmt == ref.fmt else None
    scalars = {n: k for n in ref.names if (k := ref.scalar_kind(n))}  # kept as scalars
    writer = open_writer(fmt, args.out, spec, same, scalars=scalars)
    merged = merged_tensors(
        writer.order,
        experts,
        base,
        merge_one,
        out_dtypes={n: d for n, (_, d) in spec.items()},
        labels=args.inputs,
        **block_options(args.operator, hparams),
        what=args.out,
    )
    return _save(args, writer, num, merged)


def _save(args: argparse.Namespace, writer: Any, num: int, tensors: Any) -> int:
    """Write ``(name, array)`` pairs in the writer's order (one at a time) and report."""
    write_all(writer, tensors, args.out)
    spec = writer.spec
    sys.stdout.write(
        f"merged {num} experts with {args.operator} -> {args.out} "
        f"({len(spec)} arrays, {sum(int(np.prod(s)) for s, _ in spec.values())} parameters)\n"
    )
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # keep float64 inputs float64
    import jax.numpy as jnp

    from ..merge import PluginError, get_operator
    from .merge_models import merge_models

    folders = args.format in ("hf", "peft") or args.per_tensor
    if args.config or folders or any(_is_model_folder(p) for p in [*args.inputs, args.base or ""]):
        return merge_models(args, _check_hparams)
    if args.operator is None or not args.inputs:
        raise CliError("give --operator and at least one input (or --config)")
    paths = [*args.inputs, *([args.base] if args.base else [])]
    orbax = args.format == "orbax" or (args.format is None and all(Path(p).is_dir() for p in paths))
    out_fmt = output_format(args.out, "orbax" if orbax else None, folders=False)
    check_out(args.out, out_fmt)
    try:
        op = get_operator(args.operator)
    except PluginError as exc:  # a broken installed plugin
        raise CliError(one_line(exc)) from None
    lazy = _open_lazy(args)
    if lazy is None:
        _stack_experts(args.inputs, fmt=args.format)  # input errors first (result not kept)
    num = len(args.inputs)
    hparams: dict[str, Any] = dict(op.default_hparams)
    for name in ("density", "scale", "temperature"):
        if getattr(args, name) is not None:
            hparams[name] = getattr(args, name)
    hparams.update(dict(args.hparam))
    _check_hparams(args.operator, hparams)
    for flag, name in (("weights", "weights"), ("base_accuracy", "base_accuracy")):
        values = getattr(args, flag)
        if values is None:
            continue
        if len(values) != num:
            raise CliError(f"--{flag.replace('_', '-')} has {len(values)} values for {num} inputs")
        if not all(math.isfinite(v) for v in values):
            raise CliError(f"--{flag.replace('_', '-')} has a non-finite value: {values}")
        hparams[name] = jnp.asarray(values, dtype=jnp.float64)
    for need in op.needs:
        if need not in hparams:
            raise CliError(f"operator {args.operator!r} needs --{need.replace('_', '-')}")
    if "weights" in hparams and not op.has_weights:
        raise CliError(f"operator {args.operator!r} takes no weights")
    if lazy is not None and is_streamable(args.operator, hparams):
        return _merge_streamed(args, op, hparams, lazy, out_fmt)
    base = _load_expert(args.base, args.step, args.format) if args.base else None
    stacked = _stack_experts(args.inputs, base, args.base or "", args.step, args.format)
    tv = {k: jnp.asarray(v) for k, v in stacked.items()}
    try:
        merged = op.fn(tv, jax.random.key(args.seed), **hparams)
    except (ValueError, TypeError) as exc:  # library validation: bad hyperparameters
        raise CliError(one_line(exc)) from None
    out = {k: np.asarray(v) for k, v in merged.items()}
    if base is not None:
        out = {k: (base[k] + v).astype(base[k].dtype) for k, v in out.items()}
    for k, v in out.items():
        finite = np.isfinite(v.astype(np.float32) if v.dtype.itemsize < 4 else v)
        if not np.all(finite):
            raise CliError(
                f"the merged output has {int(finite.size - finite.sum())} NaN/Inf value(s) in "
                f"{k!r} (overflow: are the hyperparameters too large?); {args.out} not written"
            )
    writer = open_writer(out_fmt, args.out, {k: (v.shape, v.dtype) for k, v in out.items()})
    return _save(args, writer, num, ((k, out[k]) for k in writer.order))


add_arguments = _add_merge_arguments
run = _run_merge
