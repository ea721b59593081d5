"""Tests for paper/build.py: template filling and its errors."""

import json

import pytest

from paper import build as pb


def _setup(tmp_path, summary, template):
    res = tmp_path / "results"
    res.mkdir()
    (res / "demo.json").write_text(json.dumps({"config": {"seed": 0}, "summary": summary}))
    sec = tmp_path / "sections"
    sec.mkdir()
    (sec / "demo.md").write_text(template)
    return res, sec


def test_fills_placeholders_in_order(tmp_path):
    res, sec = _setup(
        tmp_path,
        {"n_star": 5, "ratio": 1.41823, "verdict": "holds"},
        "<!-- results: demo -->\n## Demo\nn* = {{n_star}}, r = {{demo.ratio}}: {{verdict}}\n",
    )
    out = pb.build(res, tmp_path / "report.md", sections_dir=sec)
    text = out.read_text()
    assert "n* = 5, r = 1.418: holds" in text
    assert "results:" not in text


def test_missing_key_and_missing_results_are_errors(tmp_path):
    res, sec = _setup(tmp_path, {"a": 1}, "<!-- results: demo -->\n{{b}}\n")
    out = tmp_path / "report.md"
    with pytest.raises(pb.PaperBuildError, match=r"placeholder \{\{b\}\} not found"):
        pb.build(res, out, sections_dir=sec)
    assert not out.exists()
    (sec / "demo.md").write_text("<!-- results: absent -->\nx\n")
    with pytest.raises(pb.PaperBuildError, match="absent.json"):
        pb.build(res, out, sections_dir=sec)
    assert not out.exists()


def test_readme_docs_and_report_stand_alone():
    """No project document sends its reader outside the repository (to notes they lack)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", *root.glob("docs/*.md"), *root.glob("paper/sections/*.md")]
    docs += [*root.glob("mergetheory/**/*.py"), *root.glob("experiments/*.py")]
    docs += [*root.glob("figures/*.py"), *root.glob("benchmarks/*.py")]
    outside = re.compile(r"\.\./shared|THEORY\.md|OPERATORS\.md|PEERS\.md|DESIGN\.md")
    offenders = [
        f"{p.relative_to(root)}: {m.group(0)}"
        for p in docs
        for m in [outside.search(p.read_text())]
        if m
    ]
    assert not offenders, offenders
