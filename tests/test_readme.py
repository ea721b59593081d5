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


def _shell_block_after(text: str, marker: str) -> list[str]:
    section = text.split(marker, 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M).group(1)
    return [line for line in block.strip().splitlines() if line.strip()]


def test_readme_shell_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """The "From the shell" block, line by line, in an empty folder (``examples/`` linked)."""
    import json
    import shlex
    import subprocess
    import sys

    from mergetheory.cli import main

    lines = _shell_block_after(README.read_text(), "From the shell")
    assert lines[0] == "python examples/make_inputs.py"
    (tmp_path / "examples").symlink_to(README.parent / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "python":
            proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        else:
            assert argv[0] == "mergetheory"
            assert main(argv[1:]) == 0, capsys.readouterr().err
            outputs.append(capsys.readouterr().out)
    with np.load(tmp_path / "merged.npz") as merged:
        assert merged["w"].shape == (64, 32) and merged["b"].shape == (32,)
    curve = json.loads(outputs[-1])
    assert curve["n"] == list(range(1, 9)) and np.all(np.diff(curve["mean"]) > 0)


def test_every_readme_cli_command_is_run_by_a_test():
    text = README.read_text()
    tested = set(_shell_block_after(text, "From the shell"))
    tested |= set(_shell_block_after(text, "## Your own experts"))
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            if line.startswith(("mergetheory ", "python ")):
                assert line in tested, line
