r"""Hypotheses from your own code: :func:`register_hypothesis`, entry points, run and report.

A *hypothesis* is what every section of the toolkit's report is: a **statement**, a
**check** ``check_*(key, ...)`` returning evidence with a verdict, an **experiment**
``main(argv) -> int`` built on :func:`mergetheory.experiment.run_experiment` (it writes
``<out-dir>/<name>.npz`` + ``.json``), an optional **figure** ``main(argv) -> int`` built on
:func:`mergetheory.figure.run_figure` (``--results-dir``, ``--out-dir``), and a **report
section**: a Markdown template naming its results with ``<!-- results: NAME -->`` and
quoting them with ``{{key}}`` (:func:`mergetheory.experiment.render_section`).

:func:`register_hypothesis` records one in :data:`HYPOTHESES`; a package publishes one in
the entry-point group ``mergetheory.hypotheses`` (the entry names the hypothesis and points
at a :class:`Hypothesis` or a mapping of its fields), found by :func:`load_hypotheses`.
:func:`run_hypothesis` runs experiment, figure and section in order (what
``mergetheory run NAME`` and ``mergetheory run PATH.py`` do for registered hypotheses);
:func:`render_hypotheses` renders the sections of every registered hypothesis that has
results (the repository's ``paper/build.py`` appends them to the report).

The built-in hypotheses are the repository's experiments
(:data:`BUILTIN_HYPOTHESIS_NAMES`, ``experiments/<name>.py`` + ``paper/sections``); a
registered name may not clash with them.

Example:
  >>> h = register_hypothesis("my_claim", statement="...", check=check_my_claim,
  ...                         experiment=main, figure=fig_main, section=TEMPLATE)
  >>> run_hypothesis("my_claim", ["--quick", "--out-dir", "results"])
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "BUILTIN_HYPOTHESIS_NAMES",
    "HYPOTHESES",
    "HYPOTHESIS_ENTRY_POINT_GROUP",
    "Hypothesis",
    "HypothesisError",
    "get_hypothesis",
    "hypothesis_names",
    "load_hypotheses",
    "register_hypothesis",
    "render_hypotheses",
    "run_hypothesis",
    "unregister_hypothesis",
]

HYPOTHESIS_ENTRY_POINT_GROUP = "mergetheory.hypotheses"
"""The package entry-point group in which plugins publish hypotheses (name -> object)."""

BUILTIN_HYPOTHESIS_NAMES: tuple[str, ...] = (
    "concavity",
    "diagnostics",
    "instance_mergeability",
    "kinematic",
    "mergeability",
    "operator_diagnostics",
    "real_merging",
    "rht_coverage",
    "saturation",
    "scaling_law",
    "threshold",
)
"""The repository's own experiments (``experiments/<name>.py``): reserved names."""


class HypothesisError(ValueError):
    """A hypothesis cannot be registered: name clash, bad signature or bad section."""


class Hypothesis(NamedTuple):
    """A registered hypothesis.

    Attributes:
      name: results stem and section name (a Python identifier).
      statement: the precise statement (and its assumptions).
      check: ``check(key, ...) -> evidence`` (a NamedTuple with a ``verdict``).
      experiment: ``main(argv) -> int`` writing ``<out-dir>/<name>.npz`` + ``.json``.
      section: the report section template (``<!-- results: name -->``, ``{{key}}``).
      figure: ``main(argv) -> int`` taking ``--results-dir`` and ``--out-dir``, or ``None``.
    """

    name: str
    statement: str
    check: Callable[..., Any]
    experiment: Callable[..., Any]
    section: str
    figure: Callable[..., Any] | None = None


HYPOTHESES: dict[str, Hypothesis] = {}
"""Registered hypotheses by name (plugins are added by :func:`load_hypotheses`)."""

_loaded: set[str] = set()
_RESULTS = re.compile(r"<!--\s*results:\s*([^>]*?)\s*-->")


def _takes_argv(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind([])
    except TypeError:
        return False
    return True


def _make(name: str, fields: Mapping[str, Any]) -> Hypothesis:
    if not isinstance(name, str) or not name.isidentifier():
        raise HypothesisError(f"hypothesis name must be a Python identifier, got {name!r}")
    if name in BUILTIN_HYPOTHESIS_NAMES:
        raise HypothesisError(f"hypothesis {name!r} is built in; choose another name")
    known = set(Hypothesis._fields) - {"name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise HypothesisError(
            f"hypothesis {name!r}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}"
        )
    missing = sorted({"statement", "check", "experiment", "section"} - set(fields))
    if missing:
        raise HypothesisError(f"hypothesis {name!r}: missing {', '.join(missing)}")
    h = Hypothesis(name=name, **fields)
    if not isinstance(h.statement, str) or not h.statement.strip():
        raise HypothesisError(f"hypothesis {name!r}: the statement must be a non-empty string")
    if not callable(h.check):
        raise HypothesisError(f"hypothesis {name!r}: check must be callable")
    try:
        params = list(inspect.signature(h.check).parameters)
    except (TypeError, ValueError):
        params = ["key"]
    if not params or params[0] != "key":
        raise HypothesisError(
            f"hypothesis {name!r}: check{inspect.signature(h.check)} must take the PRNG "
            "key first: check(key, ...)"
        )
    for what in ("experiment", "figure"):
        fn = getattr(h, what)
        if fn is None and what == "figure":
            continue
        if not callable(fn) or not _takes_argv(fn):
            raise HypothesisError(
                f"hypothesis {name!r}: {what} must be a main(argv) function taking the "
                "argument list"
            )
    stems = [s for m in _RESULTS.finditer(h.section or "") for s in m.group(1).split()]
    if name not in stems:
        raise HypothesisError(
            f"hypothesis {name!r}: the section must name its results with <!-- results: {name} -->"
        )
    return h


def register_hypothesis(
    name: str,
    *,
    statement: str,
    check: Callable[..., Any],
    experiment: Callable[..., Any],
    section: str,
    figure: Callable[..., Any] | None = None,
    replace: bool = False,
) -> Hypothesis:
    """Register a hypothesis in :data:`HYPOTHESES` (see the module docstring).

    Args:
      name: a Python identifier: the results stem, section and ``mergetheory run`` name.
      statement: the statement.
      check: ``check(key, ...) -> evidence``.
      experiment: ``main(argv) -> int`` (writes ``<out-dir>/<name>.npz`` + ``.json``).
      section: the report section template; it must contain ``<!-- results: name -->``.
      figure: ``main(argv) -> int`` with ``--results-dir`` / ``--out-dir``, optional.
      replace: allow replacing a registered (never a built-in) hypothesis.

    Returns:
      The stored :class:`Hypothesis`.

    Raises:
      HypothesisError: a name clash, a check not taking ``key`` first, an experiment or
        figure not taking ``argv``, a section that does not name its results.
    """
    fields = dict(statement=statement, check=check, experiment=experiment, section=section)
    h = _make(name, {**fields, "figure": figure})
    if name in HYPOTHESES and not replace and HYPOTHESES[name] != h:
        old = HYPOTHESES[name].experiment
        where = f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', '?')}"
        raise HypothesisError(
            f"hypothesis {name!r} is already registered (experiment {where}); choose another name"
        )
    HYPOTHESES[name] = h
    return h


def unregister_hypothesis(name: str) -> None:
    """Remove a registered hypothesis."""
    if name not in HYPOTHESES:
        raise KeyError(f"no hypothesis {name!r} is registered")
    del HYPOTHESES[name]


def load_hypotheses() -> list[str]:
    """Register every hypothesis of the ``mergetheory.hypotheses`` entry points (once each).

    Raises:
      HypothesisError: an entry point that cannot be imported or is not a hypothesis.
    """
    new = []
    for ep in metadata.entry_points(group=HYPOTHESIS_ENTRY_POINT_GROUP):
        tag = f"{ep.name}={ep.value}"
        if tag in _loaded and ep.name in HYPOTHESES:
            continue
        where = f"entry point {ep.name} = {ep.value!r} (group {HYPOTHESIS_ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise HypothesisError(f"{where}: cannot load ({type(exc).__name__}: {exc})") from exc
        fields = obj._asdict() if isinstance(obj, Hypothesis) else obj
        if not isinstance(fields, Mapping):
            raise HypothesisError(f"{where}: not a Hypothesis or a mapping of its fields")
        fields = {k: v for k, v in fields.items() if k != "name"}
        try:
            register_hypothesis(ep.name, **fields, replace=tag in _loaded)
        except (HypothesisError, TypeError) as exc:
            raise HypothesisError(f"{where}: {exc}") from None
        _loaded.add(tag)
        new.append(ep.name)
    return new


def hypothesis_names() -> list[str]:
    """Every registered hypothesis name (installed plugins included), sorted."""
    load_hypotheses()
    return sorted(HYPOTHESES)


def get_hypothesis(name: str) -> Hypothesis:
    """The registered hypothesis ``name`` (plugins loaded first); ``KeyError`` lists names."""
    if name not in HYPOTHESES:
        load_hypotheses()
    if name not in HYPOTHESES:
        raise KeyError(f"no hypothesis {name!r}; registered: {', '.join(sorted(HYPOTHESES))}")
    return HYPOTHESES[name]


def _out_dir(argv: Sequence[str]) -> Path:
    from .experiment import make_parser

    args, _ = make_parser("hypothesis").parse_known_args(list(argv))
    return Path(args.out_dir)


def run_hypothesis(name: str, argv: Sequence[str] = ()) -> dict[str, Path]:
    """Run a registered hypothesis: experiment, figure, then its report section.

    The experiment gets ``argv`` (e.g. ``["--quick", "--out-dir", "results"]``); the figure
    reads ``<out-dir>`` and writes into ``<out-dir>/figures``; the section is rendered from
    ``<out-dir>`` into ``<out-dir>/<name>.md``.

    Returns:
      ``{"results": ..., "figures": ..., "section": ...}`` paths.

    Raises:
      KeyError: no such hypothesis; RuntimeError: the experiment or figure returned non-zero.
    """
    from .experiment import render_section
    from .io import atomic_write

    h = get_hypothesis(name)
    out = _out_dir(argv)
    status = h.experiment(list(argv))
    if status:
        raise RuntimeError(f"hypothesis {name!r}: the experiment exited with status {status}")
    paths = {"results": out / f"{name}.json"}
    if h.figure is not None:
        figures = out / "figures"
        status = h.figure(["--results-dir", str(out), "--out-dir", str(figures)])
        if status:
            raise RuntimeError(f"hypothesis {name!r}: the figure exited with status {status}")
        paths["figures"] = figures
    section = render_section(h.section, out, name)
    with atomic_write(out / f"{name}.md", "w") as f:
        f.write(section)
    paths["section"] = out / f"{name}.md"
    return paths


def render_hypotheses(results_dir: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """The report sections of registered hypotheses (default: all) that have results.

    A hypothesis without ``<results_dir>/<name>.json`` is left out (it has not run).
    """
    from .experiment import render_section

    results_dir = Path(results_dir)
    chosen = hypothesis_names() if names is None else list(names)
    return [
        render_section(get_hypothesis(n).section, results_dir, n)
        for n in chosen
        if (results_dir / f"{n}.json").is_file()
    ]
