"""Poisoned site updates: validation rejects them under FedAvg; FedMedian and Krum absorb them.

One real federated round in one process: the server's Federation (tiny preset, seed 0) and its
FedAvg ``configure_train`` make the train messages; the ClientApp's own train handler runs real
patient-level DP-SGD at three real hospital sites and packs the replies; then a malicious site
replaces its own reply, and ``fedgenome.server.rounds.collect`` plus Flower's ``aggregate_train`` make the
new global model, scored on the held-out region. Only the server side is repeated per case, on
copies of the same honest replies, so every case compares against the same clean round.

One round is enough: the attacks act on the aggregate of a single round, and a second round
would make every case retrain all three sites (about 6 s each here).
"""

from __future__ import annotations

import copy
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedgenome.client import app as client_app
from fedgenome.client.site import SiteNode
from fedgenome.configs.schema import FederationConfig, Preset, load_preset
from fedgenome.configs.validation import validate
from fedgenome.server.replies import Collected, collect
from fedgenome.server.rounds import Federation, _Snapshot
from fedgenome.server.strategies import create_strategy
from fedgenome.server.validation import auto_update_norm, check_update, update_bound
from fedgenome.shared import wire
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.train import evaluate
from tests.helpers import copy_site, task_identity

pytestmark = pytest.mark.data

SITES = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")  # num-examples 200, 100, 100
NODES = {name: 101 + i for i, name in enumerate(SITES)}
ATTACKER = "hospital-tsi"  # a quarter of FedAvg's weight
HONEST = tuple(s for s in SITES if s != ATTACKER)
Attack = Callable[[npt.NDArray[np.float16]], npt.NDArray[np.float16]]  # what the attacker does to a delta
# Measured held-out bits per base (32 windows, seed 0): initial model 2.0172, clean round 2.0060.
# Undefended FedAvg with the attacker's delta scaled by x10: 1.9897, x100: 2.0331, x300: 2.3439,
# x1000: 7.5563. Early on, moving further along an honest site's direction barely hurts, so x100
# is hardly an attack; x1000 is (positive control below) and stays finite in float16 (|v| < 3).
SCALE = 1000.0
# Defended rounds measured at most 0.0021 worse than the clean one (FedAvg of the two honest
# sites 2.0058, FedMedian 2.0002 (better), Krum 2.0081) and all at least 0.009 better than the
# initial model, while the clean round gains 0.0113: a defended round may be at most CLOSE worse
# than the clean round and must still gain CLOSE over the initial model.
CLOSE = 0.005
# The undefended x1000 round measured 7.56 bits/base, 5.5 above the clean round.
WRECKED = 1.0


@dataclass(frozen=True)
class RoundOne:
    """The honest round: global weights, held-out windows, and each site's message and reply."""

    fed: FederationConfig
    preset: Preset
    global_: wire.Arrays
    initial_bits: float
    eval_windows: torch.Tensor
    instructions: dict[str, Message]
    replies: dict[str, Message]  # as the ClientApp made them; copied before every use
    sites: dict[str, Path]


def run_config(data_paths: DataPaths, run_dir: Path) -> FederationConfig:
    # A fixed sigma skips the noise calibration (5 s per site); the seed fixes init, sampling, noise.
    return validate(FederationConfig, {
        "preset": "tiny", "num-server-rounds": 1, "local-steps": 3, "patients-per-step": 8,
        "noise-multiplier": 1.0, "lr": 1e-3, "seed": 0, "eval-windows": 32,
        "run-dir": str(run_dir), "reference": str(data_paths.reference)}, source="test")


@pytest.fixture(scope="module")
def round_one(sites_dir: Path, data_paths: DataPaths, tmp_path_factory: pytest.TempPathFactory) -> RoundOne:
    root = tmp_path_factory.mktemp("poisoning")
    fed = run_config(data_paths, root / "run")
    federation = Federation(fed)
    global_ = {k: v.copy() for k, v in federation.arrays().items()}  # arrays() aliases the live model
    config = ConfigRecord({"global-round": 1, "local-steps": fed.local_steps})
    with task_identity():
        messages = list(federation.strategy.configure_train(
            1, ArrayRecord({k: Array(v) for k, v in global_.items()}), config,
            _Snapshot(list(NODES.values()))))  # type: ignore[arg-type]
    by_node = {node: name for name, node in NODES.items()}
    instructions = {by_node[m.metadata.dst_node_id]: m for m in messages}
    assert sorted(instructions) == sorted(SITES)
    replies, sites = {}, {}
    for name in SITES:  # a fixed order: configure_train samples the nodes in a random one
        sites[name] = site = copy_site(sites_dir, root / "sites", name)
        context = Context(run_id=1, node_id=NODES[name], node_config={"site": str(site)},
                          state=RecordDict(), run_config=fed.to_run_config())
        # The seed fixes the sites' windows and Poisson sampling, but Opacus draws the DP noise from
        # torch's global generator (secure_mode off): seed it as each ClientApp process has its own.
        torch.manual_seed(NODES[name])
        replies[name] = client_app.train(instructions[name], context)
    return RoundOne(fed=fed, preset=load_preset(fed.preset), global_=global_,
                    initial_bits=federation.report.initial_bits_per_base,
                    eval_windows=federation.eval_windows,
                    instructions=instructions, replies=replies, sites=sites)


def tampered(r: RoundOne, name: str, change: Attack) -> Message:
    """A reply from ``name`` like its honest one, but with ``change`` applied to every delta array."""
    content = copy.deepcopy(r.replies[name].content)
    honest = content.array_records[wire.ARRAYS]
    content[wire.ARRAYS] = ArrayRecord({k: Array(change(v.numpy())) for k, v in honest.items()})
    return Message(content=content, reply_to=r.instructions[name])


def scaled(delta: npt.NDArray[np.float16]) -> npt.NDArray[np.float16]:
    return (delta.astype(np.float32) * SCALE).astype(np.float16)


def nan(delta: npt.NDArray[np.float16]) -> npt.NDArray[np.float16]:
    out = delta.copy()
    out.flat[0] = np.nan
    return out


def heldout_bits(r: RoundOne, arrays: ArrayRecord) -> float:
    model = GenomeLM(r.preset.model)
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate(model, r.eval_windows, device=torch.device("cpu")).bits_per_base


@dataclass(frozen=True)
class Outcome:
    """What the server did with one round's replies."""

    collected: Collected
    arrays: ArrayRecord
    bits: float


def server_round(r: RoundOne, strategy: str, *, max_norm: float, attack: Attack | None = None) -> Outcome:
    """The server's side of round 1 on copies of the replies, the attacker's replaced by ``attack``."""
    replies = [copy.deepcopy(r.replies[name]) if attack is None or name != ATTACKER
               else tampered(r, name, attack) for name in SITES]
    got = collect(replies, list(NODES.values()), {}, r.global_, max_norm=max_norm)
    fed = r.fed.model_copy(update={"strategy": strategy, "krum_malicious": 1})
    arrays, _ = create_strategy(fed).aggregate_train(1, got.trained)
    assert arrays is not None
    return Outcome(got, arrays, heldout_bits(r, arrays))


@pytest.fixture(scope="module")
def clean(round_one: RoundOne) -> Outcome:
    """FedAvg of the three honest updates, under the run's automatic bound."""
    return server_round(round_one, "fedavg", max_norm=update_bound(round_one.fed, round_one.global_))


def full_weights(r: RoundOne, name: str) -> wire.Arrays:
    delta = {k: v.numpy() for k, v in r.replies[name].content.array_records[wire.ARRAYS].items()}
    return wire.decode_update(delta, r.global_)


# --- honest sites and the automatic bound -------------------------------------------------------


def test_honest_sites_pass_the_automatic_bound_with_room_to_spare(round_one: RoundOne,
                                                                  clean: Outcome) -> None:
    bound = update_bound(round_one.fed, round_one.global_)
    assert round_one.fed.max_update_norm == 0.0  # automatic
    model = GenomeLM(round_one.preset.model)
    weights = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert bound == pytest.approx(auto_update_norm(lr=round_one.fed.lr, local_steps=round_one.fed.local_steps,
                                                   parameters=weights))
    for name, reply in round_one.replies.items():  # what the ClientApp sent: float16 deltas, from the site
        assert reply.metadata.src_node_id == NODES[name]
        assert reply.metadata.dst_node_id == SUPERLINK_NODE_ID
        assert {v.dtype for v in reply.content.array_records[wire.ARRAYS].values()} == {"float16"}
    assert clean.collected.rejected == {}
    assert sorted(clean.collected.norms) == sorted(SITES)
    # Measured 0.490, 0.491, 0.490: a quarter of the bound (Adam moves each weight by at most about
    # lr per step, and DP noise flips the signs from step to step).
    assert max(clean.collected.norms.values()) < 0.5 * bound
    assert clean.bits < round_one.initial_bits - CLOSE  # the round learned: 2.0172 -> 2.0060


def test_the_automatic_bound_passes_an_honest_site_at_the_tiny_presets_lr_and_default_steps(
        round_one: RoundOne, sites_dir: Path, tmp_path: Path) -> None:
    fed = round_one.fed.model_copy(update={"lr": round_one.preset.train.lr,  # 3e-3
                                           "local_steps": FederationConfig().local_steps})  # 5
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")  # a fresh ledger and key
    (site / "state").mkdir()
    for cache in (round_one.sites["hospital-ceu"] / "state").glob("cohort-*.npz"):  # same VCF: no re-parse
        shutil.copy(cache, site / "state")
    torch.manual_seed(NODES["hospital-ceu"])
    reply = SiteNode(site).train_round(round_one.global_, fed, global_round=1)
    assert reply.delta is not None
    bound = update_bound(fed, round_one.global_)  # 9.65
    check = check_update(reply.delta, round_one.global_, max_norm=bound)
    assert check.norm < 0.5 * bound  # measured 1.87, a fifth of it


# --- FedAvg with validation: the bad update is rejected, the round goes on ----------------------


@pytest.mark.parametrize(("attack", "reason"), [(scaled, r"update norm \d+(\.\d+)? is above the bound 1\.93"),
                                                (nan, r"array '.+' holds NaN or Inf")],
                         ids=["scaled-x1000", "nan"])
def test_fedavg_with_validation_rejects_the_bad_update_and_goes_on_with_the_others(
        round_one: RoundOne, clean: Outcome, attack: Attack, reason: str) -> None:
    out = server_round(round_one, "fedavg", max_norm=update_bound(round_one.fed, round_one.global_),
                       attack=attack)
    assert list(out.collected.rejected) == [ATTACKER]
    assert re.match(reason, out.collected.rejected[ATTACKER])
    assert sorted(out.collected.norms) == sorted(HONEST)
    assert [m.metadata.src_node_id for m in out.collected.trained] == [NODES[s] for s in HONEST]
    assert ATTACKER in out.collected.epsilon  # its epsilon is still reported
    assert abs(out.bits - clean.bits) < CLOSE  # measured 2.0058 against 2.0060
    assert out.bits < round_one.initial_bits - CLOSE


# --- the positive control: the attack is real ---------------------------------------------------


def test_fedavg_without_a_norm_bound_is_wrecked_by_the_scaled_update(round_one: RoundOne,
                                                                     clean: Outcome) -> None:
    out = server_round(round_one, "fedavg", max_norm=math.inf, attack=scaled)
    assert out.collected.rejected == {}
    assert out.collected.norms[ATTACKER] > 100 * out.collected.norms[HONEST[0]]
    assert out.bits > clean.bits + WRECKED  # measured 7.56 bits/base against 2.0060


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian", "krum"])
def test_nan_is_rejected_under_every_strategy_even_without_a_norm_bound(
        round_one: RoundOne, clean: Outcome, strategy: str) -> None:
    # FedAvg and FedMedian would carry a NaN into the global weights (np.median propagates it); the
    # finite check runs whatever the bound.
    out = server_round(round_one, strategy, max_norm=math.inf, attack=nan)
    assert list(out.collected.rejected) == [ATTACKER]
    assert math.isfinite(out.bits)
    assert out.bits < clean.bits + CLOSE  # measured 2.0058, 2.0047, 2.0081


# --- robust aggregation without validation ------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fedmedian", "krum"])
def test_robust_strategies_without_a_norm_bound_stay_close_to_the_clean_round(
        round_one: RoundOne, clean: Outcome, strategy: str) -> None:
    out = server_round(round_one, strategy, max_norm=math.inf, attack=scaled)
    assert out.collected.rejected == {}
    assert len(out.collected.trained) == 3  # the scaled update reached the strategy
    # Measured FedMedian 2.0002 (the per-weight median leans towards the attacker's side, which here
    # is an honest direction) and Krum 2.0081, against 2.0060 clean and 7.56 undefended.
    assert out.bits < clean.bits + CLOSE
    assert out.bits < round_one.initial_bits - CLOSE


@pytest.mark.parametrize("strategy", ["fedmedian", "krum"])
def test_robust_strategies_with_validation_aggregate_the_honest_sites(
        round_one: RoundOne, clean: Outcome, strategy: str) -> None:
    out = server_round(round_one, strategy, max_norm=update_bound(round_one.fed, round_one.global_),
                       attack=scaled)
    assert list(out.collected.rejected) == [ATTACKER]
    assert out.bits < clean.bits + CLOSE  # measured FedMedian 2.0047, Krum 2.0081
    assert out.bits < round_one.initial_bits - CLOSE


def test_krum_picks_an_honest_sites_weights_not_the_attackers(round_one: RoundOne) -> None:
    out = server_round(round_one, "krum", max_norm=math.inf, attack=scaled)
    chosen = {k: v.numpy() for k, v in out.arrays.items()}
    matches = [name for name in HONEST
               if all(np.array_equal(chosen[k], v) for k, v in full_weights(round_one, name).items())]
    assert len(matches) == 1


# --- the example count that weights FedAvg is validated too -----------------------------------


@pytest.mark.parametrize("count", [-299, -300, 10**9], ids=["weights-sum-to-1", "weights-sum-to-0",
                                                              "takes-over-the-mean"])
def test_fedavg_with_validation_rejects_an_impossible_example_count(
        round_one: RoundOne, clean: Outcome, count: int) -> None:
    # The attacker sends its honest, norm-valid delta but claims -299 examples against the honest
    # 300: FedAvg multiplies the honest updates by 200 and 100 (measured 8.92 bits/base); at -300
    # the weights sum to 0 and aggregate_train raises ZeroDivisionError, ending the run.
    content = copy.deepcopy(round_one.replies[ATTACKER].content)
    metrics = dict(content.metric_records[wire.METRICS])
    content[wire.METRICS] = MetricRecord({**metrics, wire.NUM_EXAMPLES: count})
    replies = [copy.deepcopy(round_one.replies[name]) for name in HONEST]
    replies.append(Message(content=content, reply_to=round_one.instructions[ATTACKER]))
    got = collect(replies, list(NODES.values()), {}, round_one.global_,
                  max_norm=update_bound(round_one.fed, round_one.global_),
                  max_examples=round_one.fed.max_examples)
    arrays, _ = create_strategy(round_one.fed).aggregate_train(1, got.trained)
    assert list(got.rejected) == [ATTACKER]
    assert "example count" in got.rejected[ATTACKER]
    assert arrays is not None and abs(heldout_bits(round_one, arrays) - clean.bits) < CLOSE
