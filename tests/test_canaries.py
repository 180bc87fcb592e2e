"""Empirical privacy audit: the one-run epsilon lower bound, exposure, planting, and real training.

The behaviour tests train the tiny model for real on a real hospital site with planted canaries:
without DP the audit must find the memorisation; with the site's patient-level DP-SGD (the real
private path, ``SiteNode.train_round``) the empirical bound must stay below the ledger's epsilon.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgenome.audit.canaries import (
    CanaryDraw,
    audit_model,
    draw_canaries,
    open_sealed,
    plant,
    seal,
    site_epsilon,
)
from fedgenome.audit.empirical import (
    binomial_tail,
    count_correct,
    epsilon_lower_bound,
    exposures,
    guess_choices,
    membership_guesses,
    one_run_audit,
    p_value,
)
from fedgenome.client.site import SiteNode
from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import FederationConfig, Preset, load_site_manifest
from fedgenome.shared import wire
from fedgenome.shared.datasets import open_site, read_planted
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.train import endless, train

log = logging.getLogger(__name__)
CPU = torch.device("cpu")


def logit(q: float) -> float:
    return math.log(q / (1.0 - q))


# --- the one-run bound (privacy/empirical.py) ---------------------------------------------------

@pytest.mark.parametrize(("trials", "successes", "expected"), [
    (10, 10, 2.0 ** -10), (4, 2, 11 / 16), (5, 0, 1.0), (7, 8, 0.0)])
def test_binomial_tail_known_values_at_epsilon_zero(trials: int, successes: int, expected: float) -> None:
    assert binomial_tail(trials=trials, successes=successes, epsilon=0.0) == pytest.approx(expected)


def test_binomial_tail_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for r, v, eps in [(100, 60, 0.3), (1510, 1439, 2.5), (40, 40, 1.9), (64, 20, 0.0)]:
        q = 1.0 / (1.0 + math.exp(-eps))
        assert binomial_tail(trials=r, successes=v, epsilon=eps) == pytest.approx(
            float(stats.binom.sf(v - 1, r, q)), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("r", "v", "eps"), [(100, 60, 0.3), (40, 38, 2.0), (64, 64, 1.0)])
def test_delta_zero_is_the_pure_dp_binomial_tail(r: int, v: int, eps: float) -> None:
    pure = p_value(m=1000, guesses=r, correct=v, epsilon=eps, delta=0.0)
    assert pure == binomial_tail(trials=r, successes=v, epsilon=eps)
    assert p_value(m=1000, guesses=r, correct=v, epsilon=eps, delta=1e-4) > pure  # delta only adds


@pytest.mark.parametrize("r", [10, 50, 200])
def test_pure_dp_bound_with_all_guesses_right_has_a_closed_form(r: int) -> None:
    # P[Binomial(r, q) >= r] = q^r <= beta  <=>  q >= beta^(1/r)  <=>  eps >= logit(beta^(1/r))
    got = epsilon_lower_bound(m=r, guesses=r, correct=r, delta=0.0, beta=0.05)
    assert got == pytest.approx(logit(0.05 ** (1 / r)), abs=1e-5)


@pytest.mark.parametrize(("m", "r", "v", "delta", "printed"), [
    (1000, 100, 75, 1e-4, 0.673),  # arXiv:2305.08846v1, Appendix D's example
    (100_000, 1510, 1439, 1e-5, 2.675)])  # its Section 7 (Figure 11), printed truncated
def test_reproduces_the_papers_printed_bounds(m: int, r: int, v: int, delta: float, printed: float) -> None:
    assert epsilon_lower_bound(m=m, guesses=r, correct=v, delta=delta, beta=0.05) == pytest.approx(
        printed, abs=1.5e-3)


def test_delta_lowers_the_bound() -> None:
    pure = epsilon_lower_bound(m=1000, guesses=100, correct=75, delta=0.0)
    assert epsilon_lower_bound(m=1000, guesses=100, correct=75, delta=1e-4) < pure
    assert epsilon_lower_bound(m=1000, guesses=100, correct=75, delta=1e-9) == pytest.approx(pure, abs=1e-3)


def test_bound_is_monotone_in_correct_guesses() -> None:
    bounds = [epsilon_lower_bound(m=200, guesses=100, correct=v, delta=1e-5) for v in range(40, 101)]
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    assert bounds[-1] > 2.5


@pytest.mark.parametrize("v", [0, 30, 50, 55])
def test_chance_level_guesses_give_zero(v: int) -> None:
    assert epsilon_lower_bound(m=100, guesses=100, correct=v, delta=1e-5) == 0.0


@pytest.mark.parametrize("true_eps", [0.5, 1.0, 3.0])
def test_bound_exceeds_the_truth_with_probability_at_most_beta(true_eps: float) -> None:
    # eps-randomised response is the worst case for eps-DP: its correct guesses are exactly
    # Binomial(r, q). The bound exceeds true_eps iff the p-value at true_eps is <= beta; sum the
    # chance of every v for which that happens.
    r, beta = 150, 0.05
    q = 1.0 / (1.0 + math.exp(-true_eps))
    wrong = sum(math.comb(r, v) * q**v * (1 - q) ** (r - v) for v in range(r + 1)
                if p_value(m=r, guesses=r, correct=v, epsilon=true_eps, delta=0.0) <= beta)
    assert 0.0 < wrong <= beta


def test_membership_guesses_and_counts() -> None:
    scores = [0.9, 0.1, 0.5, 0.7, 0.2, 0.8]
    guesses = membership_guesses(scores, k_plus=2, k_minus=2)
    assert guesses == (1, -1, 0, 0, -1, 1)
    assert count_correct(guesses, [True, False, True, False, True, True]) == (4, 3)
    with pytest.raises(ValueError, match="add up"):
        membership_guesses(scores, k_plus=4, k_minus=3)


def test_best_choice_pays_for_the_grid_bonferroni() -> None:
    included = [i % 2 == 0 for i in range(100)]
    scores = [1.0 if s else 0.0 for s in included]  # perfectly separating
    audit = one_run_audit(scores=scores, included=included, delta=1e-5, beta=0.05)
    assert audit.level == pytest.approx(0.05 / len(guess_choices(100)))
    assert (audit.k_plus, audit.guesses, audit.correct) == (50, 100, 100)
    alone = one_run_audit(scores=scores, included=included, delta=1e-5, choices=[(50, 50)])
    assert alone.level == 0.05 and alone.epsilon > audit.epsilon  # a fixed choice pays nothing
    assert audit.epsilon == epsilon_lower_bound(m=100, guesses=100, correct=100, delta=1e-5,
                                                beta=audit.level)


def test_exposure_ranks_against_references() -> None:
    refs = [float(i) for i in range(1, 1024)]  # 1023 references: 1024 candidates
    low, high, middle, tie = exposures([0.5, 5000.0, 511.5, 1.0], refs)
    assert low.exposure == pytest.approx(math.log2(1024)) and low.rank == 1
    assert high.exposure == 0.0 and high.rank == 1024
    assert middle.exposure == pytest.approx(1.0)
    assert tie.rank == 2  # a tie counts against the canary


# --- sealing and planting -------------------------------------------------------------------------

def test_sealed_draw_is_private_and_bound_to_its_commitment(tmp_path: Path) -> None:
    draw = draw_canaries(m=20, span=33, repeats=2, seed=3)
    path = tmp_path / "auditor" / "canary-draw.json"
    seal(draw, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    again = open_sealed(path, commitment=draw.commitment)
    assert np.array_equal(again.tokens, draw.tokens) and np.array_equal(again.included, draw.included)
    assert again.commitment == draw.commitment
    assert draw_canaries(m=20, span=33, repeats=2, seed=3).commitment != draw.commitment  # salted
    with pytest.raises(ConfigError, match="already there"):
        seal(draw, path)
    text = path.read_text()
    flipped = text.replace("true", "false", 1) if "true" in text else text.replace("false", "true", 1)
    path.write_text(flipped)
    with pytest.raises(InputFileError, match="commitment"):
        open_sealed(path)


@pytest.fixture(scope="module")
def ceu_base(sites_dir: Path, tiny: Preset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the real hospital-ceu site whose cohort cache is built once."""
    src = sites_dir / "hospital-ceu"
    base = tmp_path_factory.mktemp("canary-site") / "hospital-ceu"
    base.mkdir()
    (base / "site.toml").write_text((src / "site.toml").read_text().replace(
        'vcf = "patients.vcf.gz"', f'vcf = "{src / "patients.vcf.gz"}"'))
    open_site(base, tiny.data, seed=0, cache_dir=base / "state")
    return base


def planted_site(base: Path, tmp_path: Path, *, span: int, repeats: int) -> tuple[Path, CanaryDraw]:
    """A fresh site with 64 canaries planted, each ``repeats`` times (seed 7)."""
    site = fresh_site(base, tmp_path)
    draw = draw_canaries(m=64, span=span, repeats=repeats, seed=7)
    plant(site, draw)
    return site, draw


def fresh_site(base: Path, tmp_path: Path) -> Path:
    """A new site directory: the base's manifest and cohort cache, no key, ledger or canaries."""
    site = tmp_path / "hospital-ceu"
    (site / "state").mkdir(parents=True)
    shutil.copy2(base / "site.toml", site / "site.toml")
    for cache in (base / "state").glob("cohort-*.npz"):
        shutil.copy2(cache, site / "state" / cache.name)
    return site


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One math thread: the machine's two cores are shared, and two threads then spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.data
def test_planted_canaries_are_extra_units_of_the_site(ceu_base: Path, tiny: Preset, tmp_path: Path) -> None:
    site = fresh_site(ceu_base, tmp_path)
    patients = len(open_site(site, tiny.data, seed=0, cache_dir=site / "state").dataset)
    assert patients == 85 and read_planted(site, span=tiny.data.window + 1) is None
    draw = draw_canaries(m=10, span=tiny.data.window + 1, repeats=3, seed=5)
    assert plant(site, draw) == 3 * int(draw.included.sum())
    planted = read_planted(site, span=tiny.data.window + 1)
    assert planted is not None and planted.commitment == draw.commitment
    assert np.array_equal(planted.tokens, draw.tokens[draw.included])  # only the included ones
    dataset = open_site(site, tiny.data, seed=0, cache_dir=site / "state").dataset
    assert len(dataset) == patients + len(planted)
    for unit in range(patients, len(dataset)):
        canary = draw.tokens[draw.included][(unit - patients) // 3]
        assert np.array_equal(dataset[unit].numpy(), canary.astype(np.int64))
        assert np.array_equal(dataset[unit].numpy(), dataset[unit].numpy())  # always the same
    with pytest.raises(InputFileError, match="do not fit windows"):
        open_site(site, tiny.data.model_copy(update={"window": 64}), seed=0, cache_dir=site / "state")


# --- behaviour: real training on a real site ------------------------------------------------------

@pytest.mark.data
def test_audit_detects_memorisation_without_dp(ceu_base: Path, tiny: Preset, tmp_path: Path,
                                               one_thread: None) -> None:
    site, draw = planted_site(ceu_base, tmp_path, span=tiny.data.window + 1, repeats=12)
    data = open_site(site, tiny.data, seed=0, cache_dir=site / "state")
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    cfg = tiny.train.model_copy(update={"steps": 100, "batch_size": 32, "lr": 2e-3, "warmup_steps": 5})
    train(model, endless(data.dataset, cfg.batch_size, seed=0), cfg, device=CPU)
    delta = load_site_manifest(site).privacy.delta
    report = audit_model(model, draw, delta=delta, theoretical_epsilon=None, references=1000)
    log.info("no DP: eps >= %.3f (%d/%d right, k=%d), exposure in %.2f / out %.2f bits",
             report.empirical_epsilon, report.correct, report.guesses, report.k_plus,
             report.exposure_included_mean, report.exposure_excluded_mean)
    assert report.empirical_epsilon > 1.0
    assert report.exposure_included_mean > report.exposure_excluded_mean + 3.0
    assert report.correct / report.guesses > 0.9


@pytest.mark.data
def test_dp_audit_never_exceeds_the_ledgers_epsilon(ceu_base: Path, tiny: Preset, tmp_path: Path,
                                                    one_thread: None) -> None:
    # One unit per canary: the site's guarantee is per patient, so each canary gets exactly it.
    site, draw = planted_site(ceu_base, tmp_path, span=tiny.data.window + 1, repeats=1)
    fed = FederationConfig(preset="tiny", num_server_rounds=2, local_steps=12, patients_per_step=16,
                           lr=3e-3, target_epsilon=8.0)
    torch.manual_seed(0)
    model = GenomeLM(tiny.model)
    global_ = wire.state_to_arrays(model.state_dict())
    node = SiteNode(site)
    for round_ in (1, 2):
        reply = node.train_round(global_, fed, global_round=round_)
        assert reply.metrics[wire.STATUS] == wire.TRAINED and reply.delta is not None
        global_ = wire.decode_update(reply.delta, global_)
    model.load_state_dict(wire.arrays_to_state(global_))
    theoretical, delta = site_epsilon(site)
    assert 7.0 < theoretical <= 8.0 and delta == load_site_manifest(site).privacy.delta
    report = audit_model(model, draw, delta=delta, theoretical_epsilon=theoretical, references=1000)
    log.info("DP: eps >= %.3f (%d/%d right) vs theoretical %.3f; exposure in %.2f / out %.2f",
             report.empirical_epsilon, report.correct, report.guesses, theoretical,
             report.exposure_included_mean, report.exposure_excluded_mean)
    assert report.empirical_epsilon <= theoretical


# --- the command line: one-line errors before anything is built -----------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["--site-name", "hospital-xyz"], "--site-name hospital-xyz"),
    (["--canaries", "1"], "--canaries 1"),
    (["--beta", "1.5"], "--beta 1.5")])
def test_audit_canaries_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            args: list[str], needle: str) -> None:
    from tests.helpers import assert_one_line_error, run_cli

    code, _, err = run_cli(["audit", "canaries", "--out", str(tmp_path / "run"), *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


def test_audit_canaries_refuses_a_directory_it_did_not_make(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import assert_one_line_error, run_cli

    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["audit", "canaries", "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "not an earlier canary audit")
    assert (tmp_path / "precious.txt").read_text() == "keep me"
