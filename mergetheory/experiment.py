r"""Run a hypothesis' experiment and report it: the runner, its parser and report sections.

An experiment is a thin script: a frozen configuration with one integer ``seed``, a
``run(config, args) -> arrays`` (or ``(arrays, summary)``) calling the library, and
``main = lambda argv=None: run_experiment(NAME, __doc__, run, CONFIG, QUICK, argv)``. The
results go to ``<out-dir>/<NAME>.npz`` + ``.json`` (:func:`mergetheory.io.save_results`);
:func:`render_section` fills a Markdown report template's ``{{key}}`` placeholders from the
``summary`` of those files. The repository's ``experiments/`` and ``paper/`` use these same
functions with their own default folders; code outside the repository uses them as is.

Example:
  >>> from typing import NamedTuple
  >>> class Config(NamedTuple):
  ...     seed: int = 0
  >>> def run(config, args):
  ...     return {"x": np.arange(3.0)}, {"total": 3.0}
  >>> # run_experiment("demo", "demo experiment", run, Config(), Config(), ["--quick"])
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ReportError",
    "configure_jax",
    "keep_freed_memory",
    "make_parser",
    "render_section",
    "run_experiment",
]


def configure_jax(
    *, x64: bool = True, compile_cache: bool = True, cache_dir: str | os.PathLike | None = None
) -> None:
    """Set the global JAX flags experiments run under (x64 by default).

    With ``compile_cache`` and a cache folder (``cache_dir``, or the environment variable
    ``MERGETHEORY_COMPILE_CACHE=/path``; ``MERGETHEORY_COMPILE_CACHE=0`` turns it off),
    compiled programs are kept in JAX's persistent cache. Results are the same either way.
    Also calls :func:`keep_freed_memory` (``MERGETHEORY_KEEP_FREED_MEMORY=0`` turns it off).
    """
    import jax

    jax.config.update("jax_enable_x64", x64)
    if os.environ.get("MERGETHEORY_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()
    setting = os.environ.get("MERGETHEORY_COMPILE_CACHE", "1")
    if compile_cache and setting != "0":
        path = Path(setting) if setting not in ("", "1") else cache_dir
        if path is not None:
            jax.config.update("jax_compilation_cache_dir", str(path))
            # every program, however quick to compile: a threshold in seconds makes the
            # cache depend on the machine's load (the bridge experiment compiles hundreds of
            # programs of ~0.3-3 s; with a 0.5 s threshold a rerun recompiled the quick ones)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's ``malloc`` to keep freed blocks for reuse instead of unmapping them.

    XLA:CPU allocates a program's temporary buffers on every execution and frees them at
    its end. With glibc's defaults, blocks over a few MiB are ``mmap``-ed and returned to
    the system when freed, so a program run thousands of times (scoring merged models)
    page-faults its whole working set on every run: on the bridge experiment's language
    scoring this was a third of the CPU time, as system time. ``mallopt`` with a high trim
    threshold and an mmap threshold of 32 MiB (the ceiling of glibc's own dynamic
    threshold) keeps those blocks in the heap. Numbers are unchanged; the process keeps
    up to ``trim_threshold`` bytes of freed memory. The measurement is in ``docs/real_merging.md``.

    Returns:
      True when both settings were applied (Linux with glibc), False elsewhere (no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = mallopt(m_mmap_threshold, int(mmap_threshold)) == 1
    return mallopt(m_trim_threshold, int(trim_threshold)) == 1 and ok


def make_parser(
    description: str, *, default_out_dir: str | os.PathLike = "results"
) -> argparse.ArgumentParser:
    """Argument parser with the options every experiment accepts (``--quick``, ``--out-dir``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small configuration (seconds; used by tests)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(default_out_dir),
        help=f"directory for the results files (default: {default_out_dir})",
    )
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache",
    )
    return parser


def run_experiment(
    name: str,
    description: str | None,
    run: Callable[[Any, argparse.Namespace], Any],
    config: Any,
    quick_config: Any,
    argv: list[str] | None = None,
    *,
    default_out_dir: str | os.PathLike = "results",
    cache_dir: str | os.PathLike | None = None,
) -> int:
    """The ``main`` of an experiment: parse, run, time, save atomically; return 0.

    Args:
      name: results stem (``<out-dir>/<name>.npz`` + ``.json``).
      description: the module docstring (its first line is the ``--help`` text).
      run: ``run(config, args) -> arrays`` or ``-> (arrays, summary)``; ``args`` carries
        ``out_dir`` and ``no_progress``.
      config: the full configuration (a NamedTuple).
      quick_config: the ``--quick`` configuration.
      argv: command-line arguments (``None``: ``sys.argv[1:]``).
      default_out_dir: ``--out-dir`` when not given.
      cache_dir: JAX's persistent compilation cache folder (see :func:`configure_jax`).

    The sidecar metadata is the configuration's fields, ``quick`` and, when ``run``
    returns one, ``summary`` (with the wall time ``elapsed_s`` added; the arrays get an
    ``elapsed_s`` entry too).
    """
    from .io import save_results

    parser = make_parser((description or name).splitlines()[0], default_out_dir=default_out_dir)
    args = parser.parse_args(argv)
    configure_jax(compile_cache=not args.no_compile_cache, cache_dir=cache_dir)
    cfg = quick_config if args.quick else config
    start = time.perf_counter()
    out = run(cfg, args)
    arrays, summary = out if isinstance(out, tuple) else (out, None)
    elapsed = time.perf_counter() - start
    arrays["elapsed_s"] = np.asarray(elapsed)
    meta: dict[str, Any] = {**cfg._asdict(), "quick": args.quick}
    if summary is not None:
        meta["summary"] = {**summary, "elapsed_s": elapsed}
    save_results(Path(args.out_dir) / name, arrays, meta)
    return 0


# --- report sections ---------------------------------------------------------------------
_RESULTS_RE = re.compile(r"<!--\s*results:\s*([^>]*?)\s*-->")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")


class ReportError(RuntimeError):
    """A report section names a missing results file or placeholder."""


def _summary(results_dir: Path, stem: str, section: str) -> dict:
    path = Path(results_dir) / f"{stem}.json"
    if not path.exists():
        raise ReportError(f"section {section!r} needs {path} (run its experiment first)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: corrupt JSON sidecar ({err})") from err
    summary = meta.get("summary")
    if summary is None:
        summary = meta.get("config", {}).get("summary", {})
    return summary


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_format(v) for v in value)
    return str(value)


def render_section(text: str, results_dir: str | os.PathLike, section: str) -> str:
    """Fill one Markdown template's placeholders from the results it names.

    A line ``<!-- results: STEM [STEM ...] -->`` names the results sidecars
    (``<results_dir>/STEM.json``) the section quotes; ``{{key}}`` is replaced by
    ``summary[key]`` of the first named sidecar that has it, ``{{STEM.key}}`` by that
    sidecar's. Floats print with 4 significant digits.

    Raises:
      ReportError: a missing sidecar or placeholder, named.
    """
    stems: list[str] = []
    for match in _RESULTS_RE.finditer(text):
        stems.extend(match.group(1).split())
    summaries = {s: _summary(Path(results_dir), s, section) for s in stems}

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if "." in name:
            stem, key = name.split(".", 1)
            if stem in summaries:
                if key not in summaries[stem]:
                    raise ReportError(f"section {section!r}: no key {key!r} in {stem}.json")
                return _format(summaries[stem][key])
        for summ in summaries.values():
            if name in summ:
                return _format(summ[name])
        raise ReportError(
            f"section {section!r}: placeholder {{{{{name}}}}} not found in {stems or 'no results'}"
        )

    body = _RESULTS_RE.sub("", text)
    return _PLACEHOLDER_RE.sub(sub, body).strip() + "\n"
