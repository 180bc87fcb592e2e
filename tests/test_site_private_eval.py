"""A real hospital site evaluates the global model privately: per-patient bits on its own patients'
haplotypes, one noisy release, one ledger entry; asked again it spends nothing; past its budget it
refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedgenome.client.site import SiteNode
from fedgenome.configs.schema import Preset, Region, load_site_manifest
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.shared import wire
from fedgenome.shared.genomes import Reference, load_cohort
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.patient_bits import patient_bits
from tests.helpers import copy_site, ledger_entries
from tests.test_optim_state import fed, global_weights

pytestmark = pytest.mark.data
RUN = "c" * 32


def test_every_patient_gets_bits_on_their_own_haplotypes(sites_dir: Path, tiny: Preset) -> None:
    manifest = load_site_manifest(sites_dir / "hospital-ceu")
    assert manifest.reference is not None and manifest.vcf is not None
    reference = Reference(manifest.reference)
    cohort = load_cohort(manifest, reference, cache_dir=None)
    torch.manual_seed(0)
    bits = patient_bits(GenomeLM(tiny.model), cohort, reference, Region.parse(fed().holdout), window=64,
                        per_patient=2, max_n_fraction=0.5, device=torch.device("cpu"))
    assert bits.shape == (len(cohort.samples),) and np.isfinite(bits).all()
    assert 1.5 < bits.mean() < 2.6  # an untrained model: near uniform guessing (2 bits)
    assert bits.std() > 0  # patients' haplotypes differ


def test_a_site_releases_one_noisy_value_and_spends_it_once(sites_dir: Path, tiny: Preset,
                                                            tmp_path: Path) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    node, weights = SiteNode(site), global_weights(tiny)
    config = fed(site_eval_noise=3.0, site_eval_windows=1)
    reply = node.private_evaluate(weights, config, global_round=1, run_key=RUN)
    [entry] = ledger_entries(site)
    assert reply.delta is None and reply.metrics[wire.STATUS] == wire.TRAINED
    assert 0.0 <= reply.metrics[wire.EVAL_BITS] <= config.site_eval_clip
    assert set(reply.metrics) <= wire.ALLOWED_METRICS
    expected = epsilon(history=[Mechanism(3.0, 1.0, 1)], delta=node.manifest.privacy.delta)
    assert (entry.status, entry.epsilon, reply.metrics[wire.EPSILON]) == ("evaluated", expected, expected)
    again = node.private_evaluate(weights, config, global_round=1, run_key=RUN)
    assert again.metrics[wire.STATUS] == wire.REFUSED and wire.EVAL_BITS not in again.metrics
    assert len(ledger_entries(site)) == 1


def test_an_evaluation_past_the_budget_is_refused(sites_dir: Path, tiny: Preset, tmp_path: Path) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-tsi")
    reply = SiteNode(site).private_evaluate(global_weights(tiny), fed(site_eval_noise=0.05),
                                            global_round=1, run_key=RUN)
    assert reply.metrics[wire.STATUS] == wire.REFUSED and wire.EVAL_BITS not in reply.metrics
    assert [(e.status, e.epsilon) for e in ledger_entries(site)] == [("refused", 0.0)]
