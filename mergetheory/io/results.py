"""Results files: ``<stem>.npz`` arrays plus a ``<stem>.json`` provenance sidecar.

Experiments and benchmarks write their numbers with :func:`save_results`; figures read
them with :func:`load_results` and nothing else. Both files are written atomically
(:func:`mergetheory.io.atomic.atomic_write`: a temporary file in the destination
directory, flushed and fsynced, then ``os.replace``),
so a reader never sees a half-written file, and an exception during writing leaves any
previous results untouched and no temporary file behind. The two files carry the same
random ``run_id``; :func:`load_results` refuses a pair whose ids differ (e.g. after a
crash between the two renames).

The sidecar records the config, the seed, the JAX / NumPy / Python versions, the
platform and JAX devices, the git revision (``git rev-parse HEAD``, or ``"unknown"``) and
whether the work tree was dirty, and a UTC timestamp.

Nothing here imports matplotlib: figure files go through
:func:`~mergetheory.io.atomic.atomic_write` from ``figures/_style.py`` (plotting never
lives in the library).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from .atomic import atomic_write

__all__ = [
    "CorruptResultsError",
    "Results",
    "ResultsNotFoundError",
    "load_results",
    "provenance",
    "save_results",
]

_RUN_ID_KEY = "__run_id__"


class ResultsNotFoundError(FileNotFoundError):
    """A results file (``.npz`` or ``.json``) does not exist."""


class CorruptResultsError(ValueError):
    """A results file exists but cannot be read, or the two files do not belong together."""


class Results(NamedTuple):
    """What :func:`load_results` returns.

    Attributes:
      arrays: ``{name: np.ndarray}`` as saved.
      metadata: the sidecar: ``config``, ``seed``, versions, platform, git revision, ...
    """

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]


def _stem(path_stem: str | os.PathLike[str]) -> Path:
    p = Path(path_stem)
    if p.suffix in (".npz", ".json"):
        p = p.with_suffix("")
    return p


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Versions, platform, devices, git revision and a UTC timestamp.

    Args:
      cwd: directory whose git repository is queried (default: this package's).

    Returns:
      A JSON-serialisable dict.
    """
    import jax  # local: importing the library must not initialise a backend

    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    rev = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain", "--untracked-files=no"], where) if rev else None
    try:
        devices = [str(d) for d in jax.devices()]
        backend = jax.default_backend()
    except RuntimeError:  # no backend available
        devices, backend = [], "unknown"
    return {
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": backend,
        "devices": devices,
        "x64": bool(jax.config.jax_enable_x64),
        "git_revision": rev or "unknown",
        "git_dirty": None if status is None else bool(status),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        obj = obj._asdict()
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy / jax arrays
        return np.asarray(obj).tolist()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, type):
        return obj.__name__
    return repr(obj)


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """What ``np.savez`` writes, for any array names (``np.savez`` reserves ``file``)."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def save_results(
    path_stem: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    config: Any,
    *,
    seed: int | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.npz`` (arrays) and ``<stem>.json`` (config + provenance) atomically.

    Args:
      path_stem: destination without suffix (a trailing ``.npz`` / ``.json`` is dropped);
        parent directories are created.
      arrays: ``{name: array}``; JAX arrays are converted with ``np.asarray``. Names must be
        non-empty strings not starting with ``"__"``.
      config: the experiment's frozen config: a dict, NamedTuple or dataclass (nested
        tuples become lists; unknown objects their ``repr``).
      seed: recorded as ``"seed"``; defaults to ``config["seed"]`` when present.

    Returns:
      ``(npz_path, json_path)``.

    Raises:
      ValueError: for bad array names or values that NumPy cannot store without pickling.
    """
    stem = _stem(path_stem)
    payload = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"save_results: bad array name {name!r}")
        arr = np.asarray(value)
        if arr.dtype == object:
            raise ValueError(f"save_results: array {name!r} has dtype object (not storable)")
        payload[name] = arr
    cfg = _to_jsonable(config)
    if seed is None and isinstance(cfg, dict):
        seed = cfg.get("seed")
    run_id = uuid.uuid4().hex
    meta = {
        "name": stem.name,
        "run_id": run_id,
        "seed": seed,
        "config": cfg,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in payload.items()},
        **provenance(),
    }
    text = json.dumps(meta, indent=2, sort_keys=False, allow_nan=True) + "\n"
    npz_path, json_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
    with atomic_write(npz_path) as f:
        _write_npz(f, {**payload, _RUN_ID_KEY: np.asarray(run_id)})
    with atomic_write(json_path, "w") as f:
        f.write(text)
    return npz_path, json_path


def load_results(path_stem: str | os.PathLike[str]) -> Results:
    """Read what :func:`save_results` wrote.

    Args:
      path_stem: the stem (a trailing ``.npz`` / ``.json`` is dropped).

    Returns:
      :class:`Results` ``(arrays, metadata)``.

    Raises:
      ResultsNotFoundError: if either file is missing (the message names it).
      CorruptResultsError: if a file cannot be parsed or the two files come from
        different runs.
    """
    stem = _stem(path_stem)
    npz_path, json_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
    for p in (npz_path, json_path):
        if not p.is_file():
            raise ResultsNotFoundError(
                f"results file {p} does not exist; run the experiment that writes "
                f"'{stem.name}' first (e.g. `python -m experiments.run_all`)"
            )
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CorruptResultsError(f"cannot read results file {npz_path}: {err}") from err
    try:
        metadata = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise CorruptResultsError(f"cannot read results sidecar {json_path}: {err}") from err
    if not isinstance(metadata, dict):
        raise CorruptResultsError(f"results sidecar {json_path} does not hold a JSON object")
    run_id = arrays.pop(_RUN_ID_KEY, None)
    if run_id is None or str(run_id) != metadata.get("run_id"):
        raise CorruptResultsError(
            f"{npz_path} and {json_path} come from different runs (run_id "
            f"{None if run_id is None else str(run_id)} vs {metadata.get('run_id')}); "
            "re-run the experiment"
        )
    return Results(arrays, metadata)
