r"""The shared figure style, argument parser and atomic PNG + PDF saving (needs matplotlib).

A figure script reads one results file and draws it; :func:`run_figure` is its ``main``::

    def draw(arrays):
        fig, ax = plt.subplots()
        ax.plot(arrays["ns"], arrays["width"])
        return fig

    def main(argv=None):
        return run_figure(argv, __doc__, "fig_demo", "demo", draw)

matplotlib is imported on first use (``plt`` or a function), with its non-interactive
``Agg`` backend selected (figures are files, never windows), so importing the library never
needs it. Drawing code lives in the figure scripts (the repository's ``figures/`` or a
user's own folder), never here; ``figures/_style.py`` is this module with the repository's
default folders. Install with ``pip install mergetheory[experiments]``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io import atomic_write, load_results

__all__ = [  # noqa: F822 (plt: matplotlib.pyplot, imported on first use)
    "STYLE",
    "atomic_savefig",
    "make_parser",
    "plt",
    "rho_colors",
    "run_figure",
]

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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def __getattr__(name: str) -> Any:
    if name == "plt":  # matplotlib.pyplot, Agg backend
        return _pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_parser(
    description: str,
    *,
    results_dir: str | os.PathLike = "results",
    out_dir: str | os.PathLike = "figures",
) -> argparse.ArgumentParser:
    """Argument parser with ``--results-dir`` and ``--out-dir`` (defaults given here)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path(results_dir),
        help=f"where the results files are (default: {results_dir})",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(out_dir),
        help=f"where the figure files go (default: {out_dir})",
    )
    return parser


def rho_colors(num: int) -> list[Any]:
    """``num`` colours from a sequential colormap (one per correlation level)."""
    cmap = _pyplot().get_cmap("viridis")
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
    results_dir: str | os.PathLike = "results",
    out_dir: str | os.PathLike = "figures",
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
      results_dir: ``--results-dir`` when not given.
      out_dir: ``--out-dir`` when not given.

    Returns:
      0 on success.
    """
    parser = make_parser(doc.splitlines()[0], results_dir=results_dir, out_dir=out_dir)
    args = parser.parse_args(argv)
    results = load_results(args.results_dir / results_name)
    extra = (results.metadata,) if with_metadata else ()
    plt = _pyplot()
    with plt.rc_context(STYLE):  # drawing *and* saving: STYLE has savefig.* / pdf.* keys
        fig = make_figure(results.arrays, *extra)
        try:
            atomic_savefig(fig, args.out_dir / name)
        finally:
            plt.close(fig)
    return 0
