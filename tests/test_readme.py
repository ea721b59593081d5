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
