"""One process of the two-process test (tests/test_multiprocess.py); not collected by pytest.

``python tests/_multiprocess_worker.py PORT PROCESS_ID OUT_DIR`` joins a two-process JAX job
on ``localhost:PORT`` (two CPU devices per process, gloo collectives), builds the task
vectors of :func:`inputs` as global arrays sharded over the process axis, runs every
registry operator, the Gram pass and the width estimators on them, gathers each result
and (process 0) writes them to ``OUT_DIR/multiprocess.npz``.
"""

import os
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

NUM_TASKS = 4
SHAPES = {"w": (NUM_TASKS, 8, 3), "b": (NUM_TASKS, 12), "v": (NUM_TASKS, 4, 5)}
"""Every leaf's axis 1 is a multiple of the 4 devices: it is the sharded axis."""


def inputs():
    """``(task_vectors, base, base_accuracy)`` as NumPy float64 (the same in every process)."""
    rng = np.random.default_rng(1313)
    tv = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    base = {k: rng.standard_normal(s[1:]) for k, s in SHAPES.items()}
    return tv, base, rng.uniform(0.1, 0.9, NUM_TASKS)


def run_all(tv, base, base_accuracy, mesh):
    """Every registry operator, the Gram pass and the width estimators; NumPy results."""
    from jax.experimental import multihost_utils

    from mergetheory.geometry import ConvexHull, ConvexHullWithOrigin, PolyhedralCone
    from mergetheory.merge import BUILTIN_OPERATOR_NAMES, MERGE_OPERATORS
    from mergetheory.tree import gram_matrix
    from mergetheory.width import gaussian_width, statistical_dimension
    from mergetheory.width.sharding import sharded_gaussian_width, sharded_gram_matrix

    def host(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    key = jr.key(7)
    out = {}
    for name in sorted(BUILTIN_OPERATOR_NAMES):
        op = MERGE_OPERATORS[name]
        needs = {"base": base, "base_accuracy": base_accuracy}
        merged = op.fn(tv, key, **op.default_hparams, **{n: needs[n] for n in op.needs})
        for leaf, value in merged.items():
            out[f"{name}/{leaf}"] = host(value)
    gram = gram_matrix(tv)
    out["gram"] = host(gram)
    out["sharded_gram"] = host(sharded_gram_matrix(tv, mesh))
    hull = ConvexHull.from_gram(gram)
    for name, est in {
        "width": gaussian_width(key, hull, num_samples=4096),
        "width_points": gaussian_width(
            key, ConvexHullWithOrigin.from_task_vectors(tv), num_samples=512, method="naive"
        ),
        "statdim": statistical_dimension(key, PolyhedralCone.from_gram(gram), num_samples=512),
        "sharded_width": sharded_gaussian_width(
            key, hull, num_samples=4096, chunk_size=512, mesh=mesh
        ),
    }.items():
        out[f"{name}/mean"] = host(est.mean)
        out[f"{name}/stderr"] = host(est.stderr)
    return out


def nan_rejected(tv, global_array):
    """Whether a NaN on process 1's shard is rejected by the default checks."""
    from jax.sharding import PartitionSpec as P

    from mergetheory.merge import MERGE_OPERATORS
    from mergetheory.tree import TaskVectorError

    w = inputs()[0]["w"]
    w[1, -1, 0] = np.nan  # axis 1 is sharded: the last row lives on process 1's devices
    bad = {**tv, "w": global_array(w, P(None, "d"))}
    try:
        MERGE_OPERATORS["ties"].fn(bad, jr.key(0))
    except TaskVectorError as err:
        return "1 NaN and 0 Inf" in str(err)
    return False


def main(port: str, process_id: str, out_dir: str) -> None:
    """Join the job, shard the inputs over the 4 devices of 2 processes, run, write."""
    # two devices per process; the low optimisation level of tests/conftest.py (compile time
    # dominates these small programs)
    os.environ["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    )
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=int(process_id)
    )
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from mergetheory.width.sharding import make_mesh

    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    mesh = make_mesh(axis_name="d")
    tv, base, base_accuracy = inputs()

    def global_array(x, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    tv = {k: global_array(v, P(None, "d")) for k, v in tv.items()}
    base = {k: global_array(v, P("d")) for k, v in base.items()}
    assert not tv["w"].is_fully_addressable
    out = run_all(tv, base, jnp.asarray(base_accuracy), mesh)
    out["nan_rejected"] = np.asarray(nan_rejected(tv, global_array))
    if jax.process_index() == 0:
        np.savez(os.path.join(out_dir, "multiprocess.npz"), **out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
