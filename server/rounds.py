"""The federated round loop: quorum, training, filtering, aggregation, evaluation, checkpoints.

Flower's ``Strategy.start`` cannot resume and waits forever for ``min_available_nodes``; this loop
keeps the strategies' own ``configure_train`` and ``aggregate_train`` and adds what a consortium
needs around them: a quorum with a timeout, sites that refuse (budget spent) or fail, float16
deltas decoded against the global weights, a checkpoint and a report after every round, and
resume from the last checkpoint with global round numbers (so no site's ledger counts a round twice).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedgenome.configs.errors import ConfigError, FedGenomeError
from fedgenome.configs.schema import FederationConfig, Region, load_preset
from fedgenome.server.epsilon_check import EpsilonCheck
from fedgenome.server.identity import NodeIdentity, check_claim, node_identities
from fedgenome.server.ledger_heads import HeadCheck
from fedgenome.server.replies import Collected, ReplyChecks, collect, node_label, read_reply
from fedgenome.server.report import RoundRecord, RunReport, read_state, write_state
from fedgenome.server.secagg import SecureRound, secure_round
from fedgenome.server.site_eval import SiteEvaluations, due, evaluate_at_sites, evaluation_content
from fedgenome.server.site_policy import declared_examples, registered_keys
from fedgenome.server.strategies import create_strategy, load_strategy_state, save_strategy_state
from fedgenome.server.validation import UpdateRejected, check_update, update_bound
from fedgenome.shared import wire
from fedgenome.shared.checkpoint import load_checkpoint, load_initial, save_checkpoint
from fedgenome.shared.clock import utc_stamp
from fedgenome.shared.datasets import tile_windows
from fedgenome.shared.genomes import Reference
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.reference_markov import reference_baseline
from fedgenome.shared.run_layout import RunLayout
from fedgenome.shared.train import evaluate
from fedgenome.shared.variant_panel import panel_positions, read_panel

log = logging.getLogger(__name__)


class QuorumError(FedGenomeError):
    """Too few sites came online within the sample timeout."""


class _Snapshot:
    """The nodes a round may use, handed to a strategy's ``configure_train`` in place of the grid."""

    def __init__(self, nodes: list[int]) -> None:
        self._nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)


def wait_for_quorum(grid: Grid, *, minimum: int, timeout: float) -> list[int]:
    """Online node ids once at least ``minimum`` are connected; QuorumError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise QuorumError(f"quorum not reached: {len(nodes)} of the {minimum} sites needed "
                              f"were online after {timeout:.0f} s")
        time.sleep(1.0)
    return nodes


def packed(messages: list[Message], global_: wire.Arrays, *, rnd: int) -> list[Message]:
    """The train instructions with the global model packed into one array, its layout in the config.

    Each message is grouped under the global round (its ``group_id``), as SecAgg+ does.
    """
    record = ArrayRecord({wire.PACKED: Array(wire.pack(global_, np.float32))})
    for msg in messages:
        msg.content[wire.ARRAYS] = record
        msg.content.config_records[wire.CONFIG][wire.LAYOUT] = wire.layout(global_)
        msg.metadata.group_id = str(rnd)
    return messages


def with_defaults(fed: FederationConfig) -> FederationConfig:
    """Fill an empty 'run-dir' (~/fedgenome-runs/<time>) and 'reference' (the data cache's)."""
    from fedgenome.shared.fetch import data_paths

    update: dict[str, Any] = {}
    if not fed.run_dir:
        update["run_dir"] = str(Path.home() / "fedgenome-runs" / utc_stamp())
    elif not Path(fed.run_dir).is_absolute():
        raise ConfigError(f"run config 'run-dir' = {fed.run_dir!r}: give an absolute directory")
    if not fed.reference:
        cached = data_paths().reference
        if not cached.exists():
            raise ConfigError("run config 'reference' is empty and the data cache has no "
                              "reference: run 'fedgenome data fetch' or set reference")
        update["reference"] = str(cached)
    return fed.model_copy(update=update) if update else fed


class Federation:
    """A run's global model, strategy, evaluation data, report and checkpoints."""

    def __init__(self, fed: FederationConfig) -> None:
        fed = with_defaults(fed)
        self.fed = fed
        self.run_dir = Path(fed.run_dir)
        self.preset = load_preset(fed.preset)
        self.strategy: Strategy = create_strategy(fed)
        self.eval_windows = self._eval_windows()
        self.eval_positions = self._eval_positions()
        self.markov = self._markov()
        self.report = RunReport(self.run_dir, fed.model_dump(by_alias=True), markov=self.markov)
        self.names: dict[int, str] = {}
        self.declared = declared_examples(Path(fed.pki)) if fed.pki else {}
        self.registry = registered_keys(Path(fed.pki)) if fed.pki else None
        self.done = 0
        resumed = read_state(self.run_dir) if fed.resume else None
        if resumed is not None:
            self._resume(*resumed)
        elif read_state(self.run_dir) is not None:
            raise ConfigError(f"{self.run_dir} holds an earlier run; set resume = true to continue "
                              "it, or choose another run-dir")
        else:
            self._start()

    def _start(self) -> None:
        """A fresh run: a new run key; the initial checkpoint's weights, or a seeded random model."""
        self.report.run_key = secrets.token_hex(16)
        if self.fed.initial_checkpoint:
            initial = load_initial(Path(self.fed.initial_checkpoint), model=self.preset.model,
                                   reference=Path(self.fed.reference),
                                   exclude=[Region.parse(self.fed.holdout)])
            self.model = initial.model
            self.report.initial_checkpoint = initial.record()
            log.info("starting from %s (weights SHA-256 %s)", initial.path, initial.sha256)
        else:
            torch.manual_seed(self.fed.seed)
            self.model = build_model(self.preset.model, reference=Path(self.fed.reference),
                                     exclude=[Region.parse(self.fed.holdout)])
        self.report.initial_bits_per_base = self.heldout_bits()
        self.report.write()

    def _resume(self, done: int, checkpoint: Path) -> None:
        """Continue after round ``done``: its checkpoint, strategy state, report, key and start."""
        self.done = done
        self.model = load_checkpoint(checkpoint).model
        self.report = RunReport.load(self.run_dir, self.report.config)
        self.report.markov = self.markov
        load_strategy_state(self.strategy, RunLayout(self.run_dir).strategy_state)
        recorded = self.report.initial_checkpoint
        asked = self.fed.initial_checkpoint
        if asked and (recorded is None or Path(asked).resolve() != Path(recorded["path"])):
            start = recorded["path"] if recorded else "random weights"
            raise ConfigError(f"run config 'initial-checkpoint' = {asked!r}, but the run in "
                              f"{self.run_dir} started from {start}: a resumed run keeps its "
                              "start; drop initial-checkpoint or set it to that")
        if not self.report.run_key:  # a run directory from before run keys
            self.report.run_key = secrets.token_hex(16)
        log.info("resuming after round %d from %s", done, checkpoint)

    @property
    def initial_sha256(self) -> str | None:
        """SHA-256 of the initial checkpoint's weights; None for a random start."""
        return self.report.initial_checkpoint["sha256"] if self.report.initial_checkpoint else None

    def round_config(self, rnd: int, *,
                     positions: tuple[int, ...] | None = None) -> dict[str, int | str]:
        """What every message of round ``rnd`` carries besides the weights; evaluate: the ``positions``."""
        orders = wire.RoundConfig(rnd, run_key=self.report.run_key, initial_sha256=self.initial_sha256,
                                  markov_prior=None if self.model.prior is None
                                  else self.model.prior.fingerprint, eval_positions=positions)
        return {**orders.to_config(), wire.LOCAL_STEPS: self.fed.local_steps}

    def _eval_positions(self) -> tuple[int, ...] | None:
        """The public panel's positions every site evaluation scores (None without evaluations or panel)."""
        if not (self.fed.site_eval_panel and self.fed.site_eval_every):
            return None
        region = Region.parse(self.fed.holdout)
        panel = read_panel(self.fed.site_eval_panel, region.contig)
        picked = panel_positions(panel, Reference(Path(self.fed.reference)), region,
                                 count=self.fed.site_eval_positions, context=self.fed.site_eval_context,
                                 max_n_fraction=self.preset.data.max_n_fraction)
        log.info("site evaluations score %d positions of the public panel %s", len(picked),
                 self.fed.site_eval_panel)
        return tuple(picked)

    def _eval_windows(self) -> torch.Tensor:
        region = Region.parse(self.fed.holdout)
        ref = Reference(Path(self.fed.reference))
        return tile_windows({region.contig: ref.tokens(region.contig)}, [region],
                            window=self.preset.data.window, count=self.fed.eval_windows,
                            max_n_fraction=self.preset.data.max_n_fraction)

    def _markov(self) -> BaselineScore:
        """The best-k Markov baseline on the held-out windows, once per run (no privacy cost)."""
        score = reference_baseline(Path(self.fed.reference), exclude=[Region.parse(self.fed.holdout)]
                                   ).score(self.eval_windows)
        log.info("%s: %.4f held-out bits per base (%s)", score.label, score.bits_per_base, PRIVACY_NOTE)
        return score

    def heldout_bits(self) -> float:
        """Bits per base of the global model on the held-out region."""
        return evaluate(self.model, self.eval_windows, device=torch.device("cpu")).bits_per_base

    def arrays(self) -> wire.Arrays:
        """The global weights as float32 numpy arrays."""
        return wire.state_to_arrays(self.model.state_dict())

    def run_round(self, grid: Grid, rnd: int, context: Context | None = None) -> RoundRecord:
        """One round: quorum, train, validate and aggregate the sites' updates, evaluate."""
        start = time.monotonic()
        nodes = wait_for_quorum(grid, minimum=self.fed.min_nodes, timeout=self.fed.sample_timeout)
        identities = node_identities(grid)
        global_ = self.arrays()
        config = ConfigRecord(self.round_config(rnd))  # type: ignore[arg-type]
        messages = packed(list(self.strategy.configure_train(
            rnd, ArrayRecord({k: Array(v) for k, v in global_.items()}), config,
            cast(Grid, _Snapshot(nodes)))), global_, rnd=rnd)
        sampled = [m.metadata.dst_node_id for m in messages]
        bound = update_bound(self.fed, global_)
        if self.fed.aggregation == "secagg+":
            if context is None:
                raise ConfigError("aggregation 'secagg+' needs the ServerApp's context")
            got = self._secure(grid, context, rnd, sampled, global_, bound, identities)
        else:
            replies = list(grid.send_and_receive(messages, timeout=self.fed.round_timeout))
            got = collect(replies, sampled, self.names, global_, max_norm=bound,
                          max_examples=self.fed.max_examples, declared=self.declared,
                          identities=identities, registry=self.registry,
                          epsilons=self.epsilon_check(), heads=HeadCheck.of_report(self.report.rounds))
            if got.trained:
                arrays, _ = self.strategy.aggregate_train(rnd, got.trained)
                if arrays is not None:
                    self.model.load_state_dict(arrays.to_torch_state_dict())
        seen_before = {s for r in self.report.rounds for s in r.trained + r.refused + list(r.rejected)}
        present = set(got.epsilon)
        loss = sum(got.losses) / len(got.losses) if got.losses else None
        evals = SiteEvaluations()
        if due(self.fed, rnd):
            content = evaluation_content(self.arrays(), self.round_config(rnd, positions=self.eval_positions))
            evals = evaluate_at_sites(grid, nodes, content, self.fed, names=self.names, identities=identities)
        trained = sorted(n for n in got.epsilon if n not in got.refused and n not in got.rejected)
        got.epsilon.update(evals.epsilon)  # the cumulative epsilon after the round, evaluation included
        return RoundRecord(
            round=rnd, train_loss=loss, heldout_bits_per_base=self.heldout_bits(), trained=trained,
            refused=sorted(got.refused), failed=sorted(got.failed),
            dropped=sorted(seen_before - present), epsilon=dict(sorted(got.epsilon.items())),
            rejected=dict(sorted(got.rejected.items())),
            update_norms={k: round(v, 6) for k, v in sorted(got.norms.items())},
            ledger_heads=dict(sorted(got.heads.items())),
            claims=[{"node": c.node_id, "key_fingerprint": c.fingerprint, "claimed": c.claimed,
                     "problem": c.problem} for c in got.claims],
            seconds=time.monotonic() - start, site_bits=dict(sorted(evals.bits.items())),
            site_bits_std=dict(sorted(evals.std.items())),
            site_eval_refused=sorted(evals.refused), site_eval_failed=sorted(evals.failed))

    def _secure(self, grid: Grid, context: Context, rnd: int, sampled: list[int],
                global_: wire.Arrays, bound: float, identities: Mapping[int, NodeIdentity]) -> Collected:
        """A SecAgg+ round: only the mean delta is seen, so the mean is what is validated.

        Each site's name, declared metrics and weight are checked too; an impossible one rejects
        the whole mean, since one site's part of the sum cannot be taken out.
        """
        result = secure_round(grid, context, self.fed, rnd=rnd, nodes=sampled, global_=global_,
                              config=self.round_config(rnd))
        got = Collected(failed=[node_label(n, self.names, identities) for n in result.failed])
        problems = self._secure_metrics(result, got, identities)
        if problems and result.mean_delta is not None:  # its part of the sum cannot be taken out
            log.warning("rejected the securely aggregated update of round %d: %s", rnd, problems)
            why = "secure mean: " + "; ".join(problems)
            got.rejected.update({node_label(node, self.names, identities): why
                                 for name, node in result.nodes.items() if name not in got.refused})
            return got
        if result.mean_delta is None:
            return got
        try:
            got.norms["(secure mean)"] = check_update(result.mean_delta, global_, max_norm=bound,
                                                      dtype=np.float32).norm
        except UpdateRejected as exc:
            log.warning("rejected the securely aggregated update of round %d: %s", rnd, exc)
            got.rejected.update({name: f"secure mean: {exc}" for name in result.metrics
                                 if name not in got.refused})
            return got
        self.model.load_state_dict(wire.arrays_to_state(wire.decode_update(result.mean_delta, global_)))
        return got

    def _secure_metrics(self, result: SecureRound, got: Collected,
                        identities: Mapping[int, NodeIdentity]) -> list[str]:
        """Check each SecAgg+ participant's name, metrics and weight into ``got``; the problems."""
        problems: list[str] = []
        checks = ReplyChecks(self.fed.max_examples, self.declared, self.epsilon_check(),
                             HeadCheck.of_report(self.report.rounds), self.registry)
        for name, sent in result.metrics.items():
            metrics = {k: v for k, v in sent.items() if k not in wire.SITE_KEYS}
            site = {wire.SITE_NAME: name, **{k: v for k, v in sent.items() if k in wire.SITE_KEYS}}
            claim = check_claim(result.nodes[name], name, identities=identities, bound=self.names,
                                taken=set(got.epsilon), registry=checks.registry)
            if claim.site is None:
                got.claims.append(claim)
                problems.append(str(claim.problem))
                continue
            self.names[claim.node_id] = name
            try:
                reply = read_reply(RecordDict({wire.SITE_RECORD: ConfigRecord(site),  # type: ignore[arg-type]
                                               wire.METRICS: MetricRecord(metrics)}))  # type: ignore[arg-type]
                checks.check(name, replace(reply, examples=result.weights.get(name, -1)),
                             identities.get(claim.node_id))
                got.record_head(name, reply.head)
                got.epsilon[name] = reply.epsilon
                if reply.status == wire.REFUSED:
                    got.refused.append(name)
                    continue
                got.losses.append(cast(float, reply.loss))
            except (UpdateRejected, TypeError) as exc:
                problems.append(f"site {name}: {exc}")
        return problems

    def epsilon_check(self) -> EpsilonCheck:
        """The check of the sites' epsilons, with what this run's report has seen of them."""
        return EpsilonCheck.of_report(self.fed, self.preset, self.report.rounds)

    def checkpoint(self, rnd: int) -> None:
        """Save the global model, the strategy state and the resumable state after ``rnd``."""
        files = RunLayout(self.run_dir)
        path = files.checkpoint(rnd)
        meta: dict[str, Any] = {"round": rnd, "federation": self.fed.model_dump(by_alias=True),
                                "data": self.preset.data.model_dump(),
                                "reference": self.fed.reference,
                                "holdout": [self._holdout_dict()],
                                "initial_checkpoint": self.report.initial_checkpoint}
        save_checkpoint(path, self.model, meta=meta)
        save_strategy_state(self.strategy, files.strategy_state)
        write_state(self.run_dir, last_round=rnd, checkpoint=path)

    def _holdout_dict(self) -> dict[str, Any]:
        return Region.parse(self.fed.holdout).model_dump()


def run_federation(grid: Grid, fed: FederationConfig, context: Context | None = None) -> RunReport:
    """Run (or resume) the rounds of ``fed``; return the report."""
    federation = Federation(fed)
    for rnd in range(federation.done + 1, fed.num_server_rounds + 1):
        record = federation.run_round(grid, rnd, context)
        federation.report.add(record)
        federation.checkpoint(rnd)
        log.info("round %d: loss %s, held-out %.4f bits/base (Markov baseline %.4f), trained %s, "
                 "refused %s, rejected %s, failed %s", rnd,
                 "-" if record.train_loss is None else f"{record.train_loss:.4f}",
                 record.heldout_bits_per_base, federation.markov.bits_per_base, record.trained,
                 record.refused, sorted(record.rejected), record.failed)
        if math.isnan(record.heldout_bits_per_base):
            raise FedGenomeError(f"round {rnd}: the global model diverged (NaN held-out loss)")
        if fed.stop_after and rnd >= fed.stop_after and rnd < fed.num_server_rounds:
            log.info("stopping after round %d as asked; a run with resume = true continues", rnd)
            break
    return federation.report
