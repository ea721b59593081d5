"""Speed and memory benchmarks against baselines run in the same process."""

import os

# Before NumPy / SciPy / JAX load OpenBLAS: one BLAS thread, so LAPACK calls (SVD, QR)
# do not fight XLA's thread pool (measured 20-40x slower SVDs on 2 cores otherwise).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
