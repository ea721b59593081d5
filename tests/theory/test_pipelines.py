"""Each hypothesis's pipeline in --quick mode: experiment -> results -> figure -> paper section."""

import importlib
from pathlib import Path

import pytest

SECTIONS = Path(__file__).resolve().parents[2] / "paper" / "sections"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kinematic", "scaling_law", "threshold"])
def test_quick_experiment_figure_and_paper_section(name, tmp_path):
    from mergetheory.io import load_results
    from paper.build import render_section

    experiment = importlib.import_module(f"experiments.{name}")
    figure = importlib.import_module(f"figures.fig_{name}")

    assert experiment.main(["--quick", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    res = load_results(tmp_path / name)
    summary = res.metadata["config"]["summary"]
    assert res.metadata["config"]["quick"] is True
    assert summary["verdict"].split(":")[0] in (
        "holds",
        "holds under stated assumptions",
        "fails",
    )
    assert figure.main(["--results-dir", str(tmp_path), "--out-dir", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / f"fig_{name}.png").read_bytes()[:4] == b"\x89PNG"
    text = render_section((SECTIONS / f"{name}.md").read_text(), tmp_path, name)
    assert "{{" not in text and f"fig_{name}.png" in text
