"""What may cross the wire: float16 model deltas and a short list of metric keys.

A site sends ``local - global`` in float16 (half the bytes of float32 weights, and a delta keeps
its relative precision where full weights in float16 would not); the server adds it back to the
float32 global weights it sent. Pure numpy: the Flower apps turn these dicts into records.

On the wire a model travels packed: one flat array (:data:`PACKED`) holding every tensor in
state-dict order, its names and shapes beside it as JSON (:data:`LAYOUT`, in the instruction's
config). Flower moves every array of a record as objects of their own, one HTTPS request each per
hop, so 109 separate tensors cost seconds per message where one packed array costs a few requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

Arrays = dict[str, npt.NDArray[np.float32]]
WIRE_DTYPE = np.float16

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
PACKED = "packed"  # the one array of a packed model (ARRAYS record)
LAYOUT = "layout"  # config key: JSON [[name, shape], ...] of the packed model

NUM_EXAMPLES = "num-examples"  # bucketed: exact cohort sizes are themselves sensitive
STATUS = "status"  # 1 = trained, 0 = refused (budget exhausted)
EPSILON = "epsilon"  # the site's cumulative epsilon
BUDGET = "epsilon-budget"
DELTA = "delta"  # the site's delta: the server re-derives the least epsilon a round costs
TRAIN_LOSS = "train-loss"
STEPS = "steps"
EVAL_BITS = "bits-per-base"
EVAL_BITS_STD = "bits-per-base-std"  # the noise's std on EVAL_BITS, from the release alone
TRAINED, REFUSED = 1, 0
GLOBAL_ROUND = "global-round"  # round config: the server's global round number
RUN_KEY = "run-key"  # round config: the run's key (sites keep their optimizer state under it)
INITIAL_SHA256 = "initial-sha256"  # round config: SHA-256 of the run's initial checkpoint
MARKOV_PRIOR = "markov-prior"  # round config: fingerprint of the model's Markov prior (public)
LOCAL_STEPS = "local-steps"  # round config: private steps per site (sites follow their run config's)
EVAL_POSITIONS = "eval-positions"  # evaluate config: comma-separated 0-based public panel positions
ALLOWED_METRICS = frozenset({NUM_EXAMPLES, STATUS, EPSILON, BUDGET, DELTA, TRAIN_LOSS, STEPS,
                             EVAL_BITS, EVAL_BITS_STD})
SITE_RECORD = "site"  # a reply's ConfigRecord of the keys below; SecAgg+ metrics: the site's name
SITE_NAME = "name"  # site record: the site the reply speaks for
LEDGER_COUNT = "ledger-count"  # site record: entries in the site's ledger after this round
LEDGER_HEAD = "ledger-head"  # site record: SHA-256 (hex) of its last entry
LEDGER_SIGNATURE = "ledger-head-signature"  # site record: the site key's signature of the head
SITE_KEYS = frozenset({SITE_NAME, LEDGER_COUNT, LEDGER_HEAD, LEDGER_SIGNATURE})
BUCKET = 50

NODE_SITE = "site"  # node config: the site directory (an absolute path) the SuperNode serves
NODE_KEEP_UPDATES = "keep-updates"  # node config: keep a copy of every update sent (true/false)

# Flower's legacy records, which SecAgg+ runs on (flwr.compat.common.recorddict_compat names them)
LEGACY_FIT_PARAMETERS = "fitins.parameters"  # a legacy fit instruction's model
LEGACY_METRICS = "fitres.metrics"  # a legacy fit result's metrics (ours: ALLOWED_METRICS and site keys)
LEGACY_NUM_EXAMPLES = "fitres.num_examples"  # its example count, under the key below
LEGACY_NUM_EXAMPLES_KEY = "num_examples"
LEGACY_STATUS = "fitres.status"
LEGACY_PARAMETERS = "fitres.parameters"  # emptied by SecAgg+ before the reply leaves
SECAGG_RECORD = "secaggplus_configs"  # the SecAgg+ protocol's record (Flower's RECORD_KEY_CONFIGS)


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


@dataclass(frozen=True)
class RoundConfig:
    """What the server sends with every train message besides the weights (its config record)."""

    global_round: int
    run_key: str | None = None
    initial_sha256: str | None = None
    markov_prior: str | None = None
    eval_positions: tuple[int, ...] | None = None  # evaluate messages: the panel positions to score

    def to_config(self) -> dict[str, int | str]:
        """The config record's entries (absent keys stay absent)."""
        out: dict[str, int | str] = {GLOBAL_ROUND: self.global_round}
        if self.run_key is not None:
            out[RUN_KEY] = self.run_key
        if self.initial_sha256 is not None:
            out[INITIAL_SHA256] = self.initial_sha256
        if self.markov_prior is not None:
            out[MARKOV_PRIOR] = self.markov_prior
        if self.eval_positions is not None:
            out[EVAL_POSITIONS] = ",".join(str(p) for p in self.eval_positions)
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RoundConfig:
        """Read a received config record; strings stay unchecked here (the site checks them).

        Raises:
            ValueError: The evaluation positions are not comma-separated integers.
        """
        run_key, initial, prior = config.get(RUN_KEY), config.get(INITIAL_SHA256), config.get(MARKOV_PRIOR)
        positions = config.get(EVAL_POSITIONS)
        parts = None if positions is None else str(positions).split(",")
        if parts is not None and not all(p.isdigit() for p in parts):
            raise ValueError(f"{EVAL_POSITIONS} {str(positions)[:40]!r}: expected comma-separated "
                             "0-based positions")
        return cls(global_round=int(str(config[GLOBAL_ROUND])),
                   run_key=None if run_key is None else str(run_key),
                   initial_sha256=None if initial is None else str(initial),
                   markov_prior=None if prior is None else str(prior),
                   eval_positions=None if parts is None else tuple(int(p) for p in parts))


def layout(arrays: Mapping[str, npt.NDArray[np.generic]]) -> str:
    """The names and shapes of ``arrays``, in order, as the JSON string sent as :data:`LAYOUT`."""
    return json.dumps([[k, list(v.shape)] for k, v in arrays.items()], separators=(",", ":"))


def pack(arrays: Mapping[str, npt.NDArray[np.generic]], dtype: npt.DTypeLike) -> npt.NDArray[np.generic]:
    """Every array of ``arrays``, flattened in order into one array of ``dtype``."""
    return np.concatenate([np.asarray(v, dtype=dtype).ravel() for v in arrays.values()])


def unpack(flat: npt.NDArray[np.generic], layout_json: str) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays :func:`pack` flattened into ``flat``, named and shaped by ``layout_json``.

    Raises:
        ValueError: The layout is malformed or does not account for exactly ``flat``'s elements.
    """
    try:
        entries = [(str(name), tuple(int(d) for d in shape)) for name, shape in json.loads(layout_json)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed model layout ({exc})") from None
    sizes = [int(np.prod(shape)) for _, shape in entries]
    if flat.ndim != 1 or sum(sizes) != flat.size or len({n for n, _ in entries}) != len(entries):
        raise ValueError(f"a packed model of {flat.size} values does not fit its layout of "
                         f"{len(entries)} arrays and {sum(sizes)} values")
    ends = np.cumsum(sizes)
    return {name: flat[end - size:end].reshape(shape)
            for (name, shape), size, end in zip(entries, sizes, ends, strict=True)}
