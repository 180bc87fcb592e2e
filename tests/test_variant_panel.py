"""Site evaluations at a public panel's variant positions: what is read, picked, scored and refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pysam
import pytest
import torch

from fedgenome.client.site import SiteNode
from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import Preset, Region, load_site_manifest
from fedgenome.shared import wire
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.genomes import Reference, load_cohort
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.patient_bits import patient_bits_at
from fedgenome.shared.scoring import position_log_likelihood
from fedgenome.shared.variant_panel import check_positions, panel_positions, read_panel
from tests.helpers import copy_site, ledger_entries
from tests.test_optim_state import fed, global_weights

pytestmark = pytest.mark.data
HOLDOUT = Region.parse(fed().holdout)


def test_a_bim_and_a_vcf_give_the_same_zero_based_positions(data_paths: DataPaths, tmp_path: Path) -> None:
    panel = read_panel(str(data_paths.bim), "20")
    rows = [line.split() for line in data_paths.bim.read_text().splitlines()]
    assert len(panel) == sum(r[0] == "20" for r in rows) and np.all(np.diff(panel) > 0)
    assert panel[0] == min(int(r[3]) for r in rows if r[0] == "20") - 1
    vcf = tmp_path / "panel.vcf"
    header = pysam.VariantHeader()
    header.contigs.add("20")
    with pysam.VariantFile(str(vcf), "w", header=header) as out:
        for pos in panel[:5]:
            out.write(out.new_record(contig="20", start=int(pos), alleles=("A", "C")))
    assert read_panel(str(vcf), "20").tolist() == panel[:5].tolist()
    (tmp_path / "bad.bim").write_text("20 rs1 0 notanumber A C\n")
    with pytest.raises(InputFileError, match=r"bad\.bim: row 1 has position 'notanumber'"):
        read_panel(str(tmp_path / "bad.bim"), "20")
    (tmp_path / "bad.vcf").write_text("not a vcf\n")
    with pytest.raises(InputFileError, match=r"bad\.vcf: not a readable VCF"):
        read_panel(str(tmp_path / "bad.vcf"), "20")


def test_the_picked_positions_lie_in_the_held_out_region_with_their_context(data_paths: DataPaths) -> None:
    reference = Reference(data_paths.reference)
    panel = read_panel(str(data_paths.bim), "20")
    picked = panel_positions(panel, reference, HOLDOUT, count=16, context=128, max_n_fraction=0.1)
    assert len(picked) == 16 and set(picked) <= set(panel.tolist())
    assert all(HOLDOUT.start + 128 <= p < HOLDOUT.end for p in picked)
    assert picked == sorted(picked) and picked[-1] - picked[0] > (HOLDOUT.end - HOLDOUT.start) // 2
    check_positions(tuple(picked), HOLDOUT, context=128)  # what a site accepts
    with pytest.raises(ConfigError, match="none of its"):
        panel_positions(panel[panel < HOLDOUT.start], reference, HOLDOUT, count=4, context=128,
                        max_n_fraction=0.1)


def test_each_patient_is_scored_on_their_own_bases_at_the_positions(
        sites_dir: Path, data_paths: DataPaths, tiny: Preset) -> None:
    manifest = load_site_manifest(sites_dir / "hospital-ceu")
    assert manifest.reference is not None and manifest.vcf is not None
    reference = Reference(manifest.reference)
    cohort = load_cohort(manifest, reference, cache_dir=None)
    positions = panel_positions(read_panel(str(data_paths.bim), "20"), reference, HOLDOUT, count=6,
                                context=32, max_n_fraction=0.1)
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    for p in model.head.parameters():  # a head far from uniform, so the base matters
        p.data.normal_(0.0, 1.0)
    bits = patient_bits_at(model, cohort, reference, "20", positions, context=32, device=torch.device("cpu"))
    assert bits.shape == (len(cohort.samples),) and np.isfinite(bits).all() and bits.std() > 0
    seq = reference.tokens("20")
    for patient in (0, 7):  # by hand: the last base of each haplotype's window, from the 32 before it
        rows = [cohort.apply(seq[q - 32:q + 1], patient=patient, hap=h, contig="20", start=q - 32)
                for q in positions for h in (0, 1)]
        terms = position_log_likelihood(model, torch.from_numpy(np.stack(rows).astype(np.int64)),
                                        device=torch.device("cpu"))[:, -1]
        assert bits[patient] == pytest.approx(-float(terms.mean()) / math.log(2), rel=1e-5)
    bases = {tuple(int(cohort.apply(seq[q:q + 1], patient=p, hap=h, contig="20", start=q)[0])
                   for q in positions for h in (0, 1)) for p in range(len(cohort.samples))}
    assert len(bases) > 10  # real variation: patients carry different bases at the panel's positions


def test_a_site_scores_the_servers_positions_and_refuses_others(sites_dir: Path, data_paths: DataPaths,
                                                                tiny: Preset, tmp_path: Path) -> None:
    site = copy_site(sites_dir, tmp_path, "hospital-ceu")
    node, weights = SiteNode(site), global_weights(tiny)
    config = fed(site_eval_noise=3.0, site_eval_panel=str(data_paths.bim), site_eval_context=32)
    inside = (HOLDOUT.start + 1_000_000, HOLDOUT.start + 2_000_000)
    with pytest.raises(ConfigError, match=r"evaluation position 100 from the server: .* refusing"):
        node.private_evaluate(weights, config, global_round=1, run_key="d" * 32, positions=(100, *inside))
    with pytest.raises(ConfigError, match="sent no evaluation positions although the run config names"):
        node.private_evaluate(weights, config, global_round=1, run_key="d" * 32)
    with pytest.raises(ConfigError, match="evaluation positions although the run config names no"):
        node.private_evaluate(weights, fed(), global_round=1, run_key="d" * 32, positions=inside)
    reply = node.private_evaluate(weights, config, global_round=1, run_key="d" * 32, positions=inside)
    assert reply.metrics[wire.STATUS] == wire.TRAINED and wire.EVAL_BITS in reply.metrics
    assert [e.status for e in ledger_entries(site)] == ["evaluated"]  # the refusals spent nothing


def test_positions_travel_in_the_round_config_and_bad_ones_are_named() -> None:
    sent = wire.RoundConfig(3, eval_positions=(58_100_000, 58_200_000)).to_config()
    assert wire.RoundConfig.from_config(sent).eval_positions == (58_100_000, 58_200_000)
    assert wire.RoundConfig.from_config({wire.GLOBAL_ROUND: 3}).eval_positions is None
    with pytest.raises(ValueError, match="eval-positions '1,x': expected comma-separated"):
        wire.RoundConfig.from_config({wire.GLOBAL_ROUND: 3, wire.EVAL_POSITIONS: "1,x"})
