"""Shared figure style, argument parser and atomic PNG + PDF saving.

Importing this module selects matplotlib's non-interactive ``Agg`` backend (figures are
files, never windows).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from figures import DEFAULT_OUT_DIR, DEFAULT_RESULTS_DIR  # noqa: E402
from mergetheory.io import atomic_write  # noqa: E402

__all__ = ["STYLE", "atomic_savefig", "make_parser", "plt", "rho_colors"]

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "pdf.fonttype": 42,
}


def make_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with ``--results-dir`` and ``--out-dir``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"where the results files are (default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"where the figure files go (default: {DEFAULT_OUT_DIR})",
    )
    return parser


def rho_colors(num: int) -> list[Any]:
    """``num`` colours from a sequential colormap (one per correlation level)."""
    cmap = plt.get_cmap("viridis")
    return [cmap(0.9 * i / max(num - 1, 1)) for i in range(num)]


def atomic_savefig(
    fig: Any,
    path_stem: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    **savefig_kwargs: Any,
) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf``, each file written atomically.

    Each file is rendered into a temporary file in the destination directory and moved
    into place with ``os.replace``, so an interrupted or failing save never leaves a
    truncated figure. PDF metadata omit the creation date (reproducible bytes).

    Args:
      fig: a matplotlib figure.
      path_stem: destination without suffix (directories are created).
      formats: file formats / suffixes.
      **savefig_kwargs: passed to ``fig.savefig`` (e.g. ``dpi``).

    Returns:
      The written paths.
    """
    stem = Path(path_stem)
    if stem.suffix.lstrip(".") in formats:
        stem = stem.with_suffix("")
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        kwargs = {"bbox_inches": "tight", **savefig_kwargs}
        if fmt == "pdf":
            kwargs.setdefault("metadata", {"CreationDate": None})
        with atomic_write(path) as f:
            fig.savefig(f, format=fmt, **kwargs)
        paths.append(path)
    return paths


def run_figure(
    argv: list[str] | None,
    doc: str,
    name: str,
    results_name: str,
    make_figure: Any,
    *,
    with_metadata: bool = False,
) -> int:
    """The ``main`` of a one-results figure script: parse, load, draw, save atomically.

    ``make_figure`` runs, and the figure is saved, under ``plt.rc_context(STYLE)``.

    Args:
      argv: command-line arguments (``--results-dir``, ``--out-dir``).
      doc: the script's module docstring (its first line is the ``--help`` text).
      name: output stem, written as ``<out-dir>/<name>.png`` and ``.pdf``.
      results_name: the results stem to load from ``--results-dir``.
      make_figure: ``fn(arrays)`` or, with ``with_metadata``, ``fn(arrays, metadata)``.
      with_metadata: pass the results' JSON sidecar too.

    Returns:
      0 on success.
    """
    from mergetheory.io import load_results

    args = make_parser(doc.splitlines()[0]).parse_args(argv)
    results = load_results(args.results_dir / results_name)
    extra = (results.metadata,) if with_metadata else ()
    with plt.rc_context(STYLE):  # drawing *and* saving: STYLE has savefig.* / pdf.* keys
        fig = make_figure(results.arrays, *extra)
        try:
            atomic_savefig(fig, args.out_dir / name)
        finally:
            plt.close(fig)
    return 0
