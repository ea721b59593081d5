"""The README's five-minute tour runs as written and prints what it says it prints."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs(capsys):
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks, "README.md has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert out.count("WidthEstimate(") == 2  # steps 3 and 5
    curve = namespace["curve"]
    assert curve.mean.shape == (8,) and np.all(np.diff(np.asarray(curve.mean)) > 0)
    assert namespace["sweep"]["head"].shape == (4, 128, 10)  # one merge per density


def test_readme_your_own_experts_runs(tmp_path, monkeypatch, capsys):
    import json
    import shlex

    from mergetheory.cli import main
    from mergetheory.io import load_safetensors

    text = README.read_text()
    section = text.split("## Your own experts", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    shell = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert len(code) == 1 and len(shell) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(code[0], "README.md", "exec"), {})  # noqa: S102
    for line in shell[0].strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "mergetheory"
        assert main(argv[1:]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "pool/report/analysis.json").read_text())
    assert len(report["norms"]) == 4 and report["factored"] is True
    assert "Concavity" in (tmp_path / "pool/report/analysis.md").read_text()
    merged = load_safetensors(tmp_path / "pool/merged.safetensors")
    assert merged["w"].shape == (8, 8) and merged["w"].dtype == np.float32
