"""``register_hypothesis``: errors, run by name / path, report sections; the pytest plugin."""

import json
import tomllib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.experiment import run_experiment
from mergetheory.hypotheses import (
    BUILTIN_HYPOTHESIS_NAMES,
    HYPOTHESES,
    HypothesisError,
    register_hypothesis,
    render_hypotheses,
    run_hypothesis,
    unregister_hypothesis,
)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "<!-- results: toy_mean -->\n## Toy\n\nMean {{mean}}: {{verdict}}.\n"


def check_toy_mean(key, *, num):
    """The mean of 0..num-1 is (num - 1) / 2."""
    del key
    mean = float(np.mean(np.arange(num)))
    return mean, "holds" if mean == (num - 1) / 2 else "fails"


class Config(NamedTuple):
    seed: int = 0
    num: int = 9


def toy_main(argv=None):
    def run(config, args):
        mean, verdict = check_toy_mean(None, num=config.num)
        return {"mean": np.asarray(mean)}, {"mean": mean, "verdict": verdict}

    return run_experiment("toy_mean", "toy", run, Config(), Config(num=5), argv)


FIELDS = dict(statement="the mean", check=check_toy_mean, experiment=toy_main, section=SECTION)


@pytest.fixture
def toy():
    h = register_hypothesis("toy_mean", **FIELDS)
    yield h
    HYPOTHESES.pop("toy_mean", None)


def _no_key(x, *, num):
    return x


@pytest.mark.parametrize(
    "name, change, problem",
    [
        ("concavity", {}, "'concavity' is built in"),
        ("not an id", {}, "must be a Python identifier"),
        ("toy_mean", {"experiment": lambda argv: 0}, "'toy_mean' is already registered"),
        ("toy2", {"check": _no_key}, "must take the PRNG key first: check(key, ...)"),
        ("toy2", {"experiment": lambda: 0}, "experiment must be a main(argv) function"),
        ("toy2", {"figure": lambda a, b: 0}, "figure must be a main(argv) function"),
        ("toy2", {"section": "## no results line"}, "<!-- results: toy2 -->"),
        ("toy2", {"statement": " "}, "the statement must be a non-empty string"),
    ],
)
def test_register_errors_are_one_line(toy, name, change, problem):
    with pytest.raises(HypothesisError) as err:
        register_hypothesis(name, **{**FIELDS, **change})
    assert problem in str(err.value) and "\n" not in str(err.value)
    assert "toy2" not in HYPOTHESES


def test_registering_the_same_twice_is_fine(toy):
    assert register_hypothesis("toy_mean", **FIELDS) == toy  # a module imported twice


def test_builtin_names_are_the_repository_experiments():
    # the experiments make reproduce runs (modules with a main; helper modules such as
    # real_merging_summary have none)
    from experiments.run_all import discover

    assert set(BUILTIN_HYPOTHESIS_NAMES) == set(discover())


def test_run_and_render(toy, tmp_path):
    paths = run_hypothesis("toy_mean", ["--quick", "--out-dir", str(tmp_path)])
    meta = json.loads(paths["results"].read_text())
    assert (meta.get("summary") or meta["config"]["summary"])["mean"] == 2.0
    assert paths["section"].read_text() == "## Toy\n\nMean 2: holds.\n"
    assert render_hypotheses(tmp_path) == ["## Toy\n\nMean 2: holds.\n"]
    assert render_hypotheses(tmp_path / "empty") == []  # not run: left out


def test_paper_build_appends_registered_sections(toy, tmp_path):
    from paper.build import build

    run_hypothesis("toy_mean", ["--quick", "--out-dir", str(tmp_path)])
    sections = tmp_path / "sections"
    sections.mkdir()
    (sections / "intro.md").write_text("## Intro\n")
    report = build(tmp_path, tmp_path / "report.md", sections).read_text()
    assert report.index("## Intro") < report.index("## Toy") and "Mean 2: holds." in report


def test_cli_runs_a_registered_name_and_a_registering_file(toy, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["run", "toy_mean", "--quick", "--out-dir", str(out)]) == 0
    assert "hypothesis toy_mean:" in capsys.readouterr().out
    assert (out / "toy_mean.md").is_file()
    unregister_hypothesis("toy_mean")
    assert main(["run", "toy_mean"]) == 2
    assert "not a Python file nor a registered hypothesis" in capsys.readouterr().err
    module = tmp_path / "my_claims.py"
    module.write_text(
        "from test_hypotheses import FIELDS\n"
        "from mergetheory.hypotheses import register_hypothesis\n"
        "register_hypothesis('toy_mean', **FIELDS)\n"
    )
    assert main(["run", str(module), "--quick", "--out-dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "toy_mean.md").read_text() == "## Toy\n\nMean 2: holds.\n"
    bad = tmp_path / "bad_claims.py"
    bad.write_text(
        "from mergetheory.hypotheses import register_hypothesis\n"
        "register_hypothesis('bad', statement='s', check=lambda x: 0, experiment=print, "
        "section='')\n"
    )
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad_claims.py:" in err and "key first" in err and "\n" not in err


def test_pytest_plugin_entry_point():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry = meta["project"]["entry-points"]["pytest11"]
    import importlib

    plugin = importlib.import_module(entry["mergetheory.pytest_plugin"])
    for name in ("mergetheory_check", "mergetheory_conformance", "pytest_generate_tests"):
        assert hasattr(plugin, name)
