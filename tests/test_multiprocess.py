"""Operators, the Gram pass and the width estimators on arrays sharded over two processes.

Two local processes join one JAX job (``jax.distributed.initialize`` on ``localhost``, two
CPU devices each, gloo collectives; ``tests/_multiprocess_worker.py``). The task vectors
are global arrays whose axis 1 is sharded over the four devices, so no process holds a
whole leaf, and every default input check (finiteness included) must run without
fetching a global array to one host. Each result is compared against the same call in
this single process on ordinary arrays.

Slow (about 40 s of CPU: two processes that each import JAX and compile every operator,
then the reference run here; over a minute of wall time on the shared 2-core machine), so
it runs in ``make test-slow`` and in CI's ``make test-multiprocess``.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_multiprocess_worker.py"


def _load_worker():
    spec = importlib.util.spec_from_file_location("_multiprocess_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(out_dir: Path, timeout: float = 240.0) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), port, str(pid), str(out_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in (0, 1)
    ]
    deadline = time.monotonic() + timeout
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the two-process job did not finish within {timeout:.0f} s")
    for pid, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {pid} failed:\n{log[-4000:]}"
    with np.load(out_dir / "multiprocess.npz") as data:
        return dict(data)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    import jax.numpy as jnp

    from mergetheory.merge import BUILTIN_OPERATOR_NAMES
    from mergetheory.width.sharding import make_mesh

    got = _run_two_processes(tmp_path)
    worker = _load_worker()
    tv, base, base_accuracy = worker.inputs()
    as_jax = {k: jnp.asarray(v) for k, v in tv.items()}
    want = worker.run_all(
        as_jax,
        {k: jnp.asarray(v) for k, v in base.items()},
        jnp.asarray(base_accuracy),
        make_mesh(4),
    )
    assert bool(got.pop("nan_rejected")), "a NaN on the other process's shard passed the checks"
    assert set(got) == set(want)
    ops = {name.split("/")[0] for name in want} & set(BUILTIN_OPERATOR_NAMES)
    assert ops == set(BUILTIN_OPERATOR_NAMES)
    for name in sorted(want):
        # float64 throughout; only the order of the partial sums differs between meshes
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
