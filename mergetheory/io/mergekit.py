"""mergekit YAML merge configs: the models, their parameters, the base, method and dtype.

Reads the subset of the mergekit config schema the analysis and merge commands use::

    models:
      - model: experts/math        # a path (relative to the YAML file's folder)
        parameters: {weight: 1.0, density: 0.5}
    base_model: base
    merge_method: ties
    parameters: {normalize: false}
    dtype: bfloat16

Any other top-level key (``slices``, ``tokenizer_source``, ...) is refused with a message
naming it, rather than silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from .common import CheckpointError, PathLike, require_exists

__all__ = ["MERGEKIT_KEYS", "MergekitConfig", "load_mergekit_config"]

MERGEKIT_KEYS = ("models", "base_model", "merge_method", "parameters", "dtype")
"""The top-level mergekit keys that are read."""


class MergekitConfig(NamedTuple):
    """A parsed mergekit config.

    Attributes:
      models: the experts' paths (the base model excluded if it is listed).
      model_parameters: per-expert ``parameters`` dicts (same order).
      base_model: the base model's path or ``None``.
      merge_method: mergekit's method name or ``None``.
      parameters: the top-level ``parameters``.
      dtype: the ``dtype`` or ``None``.
      path: the YAML file.
      base_parameters: the base's ``parameters`` when ``models`` lists it (mergekit's
        ``linear`` averages the base too, with its ``weight``), else ``None``.
    """

    models: list[Path]
    model_parameters: list[dict[str, Any]]
    base_model: Path | None
    merge_method: str | None
    parameters: dict[str, Any]
    dtype: str | None
    path: Path
    base_parameters: dict[str, Any] | None = None


def load_mergekit_config(path: PathLike) -> MergekitConfig:
    """Read a mergekit YAML config (paths relative to its folder).

    Raises:
      CheckpointError: a missing or malformed file, an unsupported key (naming it).
    """
    import yaml

    path = Path(path).absolute()
    require_exists(path, kind="mergekit config", is_dir=False)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a mapping with 'models'")
    unknown = sorted(set(cfg) - set(MERGEKIT_KEYS))
    if unknown:
        raise CheckpointError(
            f"{path}: mergekit key {unknown[0]!r} is not supported (supported: "
            f"{', '.join(MERGEKIT_KEYS)})"
        )
    entries = cfg.get("models")
    if not isinstance(entries, list) or not entries:
        raise CheckpointError(f"{path}: 'models' must be a non-empty list")

    def resolve(p: Any, what: str) -> Path:
        if not isinstance(p, str):
            raise CheckpointError(f"{path}: {what} must be a path string, got {p!r}")
        q = Path(p)
        return q if q.is_absolute() else path.parent / q

    base = resolve(cfg["base_model"], "base_model") if cfg.get("base_model") else None
    models, params, base_params = [], [], None
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "model" not in entry:
            raise CheckpointError(f"{path}: models[{i}] needs a 'model' key")
        model = resolve(entry["model"], f"models[{i}].model")
        p = entry.get("parameters") or {}
        if not isinstance(p, dict):
            raise CheckpointError(f"{path}: models[{i}].parameters must be a mapping")
        if base is not None and model == base:
            base_params = dict(p)
            continue
        models.append(model)
        params.append(dict(p))
    top = cfg.get("parameters") or {}
    if not isinstance(top, dict):
        raise CheckpointError(f"{path}: 'parameters' must be a mapping")
    return MergekitConfig(
        models,
        params,
        base,
        cfg.get("merge_method"),
        dict(top),
        cfg.get("dtype"),
        path,
        base_params,
    )
