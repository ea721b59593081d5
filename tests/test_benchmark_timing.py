"""The benchmarks' child-process peak RSS is the child's own, not its parent's."""

import sys

import numpy as np


def test_run_child_peak_rss_is_not_the_parents():
    from benchmarks.timing import run_child

    parent = np.ones(300 * 2**20 // 8)  # this process at >= 300 MiB resident
    child = "import numpy as np; a = np.ones(40 * 2**20 // 8); print(a.sum())"
    res = run_child([sys.executable, "-c", child], 120)
    assert res["exit_code"] == 0
    peak = res["peak_rss_bytes"]
    assert 40 * 2**20 < peak < 200 * 2**20, peak  # the child's 40 MiB + numpy, not 300 MiB
    del parent
