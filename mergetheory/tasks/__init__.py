r"""Synthetic task-vector samplers: one ``*Spec`` NamedTuple per family, one entry point.

:func:`sample_task_vectors` ``(key, spec, shapes, dtype)`` draws a task-vector set, i.e. a
pytree with the structure of ``shapes`` whose every leaf has a leading task axis
``[T, ...]``. The package has two parts:

* :mod:`~mergetheory.tasks.specs` -- *what* is sampled: the specs (:class:`GaussianSpec`,
  :class:`CorrelatedSpec`, :class:`SparseSpec`, :class:`HeavyTailedSpec`,
  :class:`SignConflictSpec`, :class:`LoRASpec`) with their norm convention, the closed
  forms of their statistics (``expected_*``), validation, :func:`family_spec` by name and
  :func:`shape_tree`;
* :mod:`~mergetheory.tasks.sampling` -- *how*: the jitted samplers on the flat ``[T, D]``
  layout behind :func:`sample_task_vectors`.

Example:
  >>> tv = sample_task_vectors(jr.key(0), CorrelatedSpec(4, rho=0.5),
  ...                          {"w": (64, 32), "b": (32,)})

Reference: ``ilharco2023editing``, ``yadav2023ties``, ``hu2022lora`` in ``paper/refs.bib``.
"""

from .sampling import sample_task_vectors as sample_task_vectors
from .specs import FAMILIES as FAMILIES
from .specs import STATIC_FIELDS as STATIC_FIELDS
from .specs import CorrelatedSpec as CorrelatedSpec
from .specs import GaussianSpec as GaussianSpec
from .specs import HeavyTailedSpec as HeavyTailedSpec
from .specs import LoRASpec as LoRASpec
from .specs import SignConflictSpec as SignConflictSpec
from .specs import SparseSpec as SparseSpec
from .specs import TaskSpec as TaskSpec
from .specs import expected_sign_agreement as expected_sign_agreement
from .specs import expected_sign_conflict as expected_sign_conflict
from .specs import expected_support_overlap as expected_support_overlap
from .specs import family_spec as family_spec
from .specs import shape_tree as shape_tree
from .specs import validate_spec as validate_spec
