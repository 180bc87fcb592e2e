"""What may cross the wire: float16 model deltas and a short list of metric keys.

A site sends ``local - global`` in float16 (half the bytes of float32 weights, and a delta keeps
its relative precision where full weights in float16 would not); the server adds it back to the
float32 global weights it sent. Pure numpy: the Flower apps turn these dicts into records.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch

Arrays = dict[str, npt.NDArray[np.float32]]
WIRE_DTYPE = np.float16

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

NUM_EXAMPLES = "num-examples"  # bucketed: exact cohort sizes are themselves sensitive
STATUS = "status"  # 1 = trained, 0 = refused (budget exhausted)
EPSILON = "epsilon"  # the site's cumulative epsilon
BUDGET = "epsilon-budget"
TRAIN_LOSS = "train-loss"
STEPS = "steps"
EVAL_BITS = "bits-per-base"
TRAINED, REFUSED = 1, 0
ALLOWED_METRICS = frozenset({NUM_EXAMPLES, STATUS, EPSILON, BUDGET, TRAIN_LOSS, STEPS, EVAL_BITS})
BUCKET = 50


def bucket(count: int) -> int:
    """Round a patient count to a multiple of 50 (at least 50), so it says little about cohorts."""
    return max(BUCKET, round(count / BUCKET) * BUCKET)


def state_to_arrays(state: dict[str, torch.Tensor]) -> Arrays:
    """A torch state dict as float32 numpy arrays (copies: later changes to the model do not show)."""
    return {k: v.detach().float().cpu().numpy().copy() for k, v in state.items()}


def arrays_to_state(arrays: Arrays) -> dict[str, torch.Tensor]:
    """Float32 numpy arrays as a torch state dict (sharing their memory)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def encode_update(local: dict[str, torch.Tensor], global_: Arrays) -> dict[str, npt.NDArray[np.float16]]:
    """The float16 delta ``local - global`` for every tensor of the model."""
    return {k: (v.detach().float().cpu().numpy() - global_[k]).astype(WIRE_DTYPE)
            for k, v in local.items()}


def decode_update(delta: Mapping[str, npt.NDArray[np.generic]], global_: Arrays) -> Arrays:
    """Float32 weights ``global + delta``."""
    return {k: (global_[k] + delta[k].astype(np.float32)).astype(np.float32) for k in global_}
