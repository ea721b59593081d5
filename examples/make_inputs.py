"""Write the small inputs the README's command-line examples use, in the current folder.

``expert1.npz``, ``expert2.npz``, ``expert3.npz``: three experts' task vectors (named arrays
``w`` ``[64, 32]`` and ``b`` ``[32]``, correlated through a shared part), the inputs of
``mergetheory merge``; ``tv.npy``: eight task vectors as the rows of one ``[8, 2048]``
array, the input of ``mergetheory width``. Run: ``python examples/make_inputs.py``.
"""

import numpy as np

rng = np.random.default_rng(0)
shared = {"w": rng.normal(size=(64, 32)), "b": rng.normal(size=32)}
for i in (1, 2, 3):
    expert = {k: 0.5 * v + rng.normal(size=v.shape) for k, v in shared.items()}
    np.savez(f"expert{i}.npz", **expert)
np.save("tv.npy", rng.normal(size=(8, 2048)))
print("wrote expert1.npz, expert2.npz, expert3.npz and tv.npy")  # noqa: T201
