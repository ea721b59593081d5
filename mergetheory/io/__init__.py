"""Files in and out: results files, model checkpoints (by format), atomic writes.

* :mod:`.results`: experiment results, ``<stem>.npz`` + ``<stem>.json`` provenance sidecar
  (:func:`save_results`, :func:`load_results`).
* :mod:`.atomic`: the one atomic-write helper (temporary sibling + rename).
* checkpoints, one module a format: :mod:`.orbax`, :mod:`.msgpack` (+ :mod:`.msgpack_index`),
  :mod:`.safetensors`, :mod:`.npz`, :mod:`.peft` (PEFT LoRA adapters), each with a
  whole-file loader and, PEFT aside, a reader and a writer of one tensor at a time
  (:class:`~mergetheory.io.common.TensorWriter`); :mod:`.flat` (flat names <-> nested trees);
  :mod:`.checkpoints` (any format, the lineage check, task vectors); :mod:`.common`
  (:class:`CheckpointError`).

Every write is atomic; every read failure is a one-line error naming the file.
"""

from .atomic import atomic_write as atomic_write
from .checkpoints import load_checkpoint as load_checkpoint
from .checkpoints import task_vectors_from_checkpoints as task_vectors_from_checkpoints
from .checkpoints import validate_lineage as validate_lineage
from .common import CheckpointError as CheckpointError
from .flat import flatten_tree as flatten_tree
from .flat import unflatten_tree as unflatten_tree
from .msgpack import load_msgpack as load_msgpack
from .msgpack import save_msgpack as save_msgpack
from .orbax import load_orbax as load_orbax
from .orbax import save_orbax as save_orbax
from .peft import PeftAdapter as PeftAdapter
from .peft import load_peft_adapter as load_peft_adapter
from .peft import peft_dense_update as peft_dense_update
from .peft import save_peft_adapter as save_peft_adapter
from .peft import stack_peft_adapters as stack_peft_adapters
from .results import CorruptResultsError as CorruptResultsError
from .results import Results as Results
from .results import ResultsNotFoundError as ResultsNotFoundError
from .results import load_results as load_results
from .results import provenance as provenance
from .results import save_results as save_results
from .safetensors import load_safetensors as load_safetensors
from .safetensors import save_safetensors as save_safetensors
