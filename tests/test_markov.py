"""The best-k Markov baseline: counts, smoothings and the order pick against brute force; the cache."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgenome.configs.schema import Region
from fedgenome.shared.datasets import allowed_intervals, tile_windows
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.genomes import Reference
from fedgenome.shared.kmers import count_kmers
from fedgenome.shared.markov import MarkovBaseline, fit_best_k
from fedgenome.shared.markov_fields import PRIVACY_KEY, PRIVACY_NOTE, BaselineScore
from fedgenome.shared.reference_markov import ReferenceBaseline, reference_baseline, split_validation
from fedgenome.shared.tokenizer import decode, encode, reverse_complement

BASES = "ACGT"


# --- an independent brute-force count on strings ---------------------------------------------------


def brute_counts(seqs: list[str], order: int) -> list[Counter[tuple[str, str]]]:
    """(context, base) counts per order, contexts as strings, broken by anything but A/C/G/T."""
    out: list[Counter[tuple[str, str]]] = [Counter() for _ in range(order + 1)]
    for seq in seqs:
        for i, base in enumerate(seq):
            if base not in BASES:
                continue
            for j in range(order + 1):
                context = seq[i - j:i] if j <= i else None
                if context is None or any(c not in BASES for c in context):
                    break
                out[j][(context, base)] += 1
    return out


def brute_kn_discounts(counts: Counter[tuple[str, str]]) -> list[float]:
    n = [sum(1 for v in counts.values() if v == r) for r in range(1, 5)]
    if min(n) == 0:
        return [0.0, 0.5, 1.0, 1.5]
    y = n[0] / (n[0] + 2 * n[1])
    return [0.0] + [min(max(r - (r + 1) * y * n[r] / n[r - 1], 0.1), r) for r in (1, 2, 3)]


class Brute:
    """The four smoothings written out on string counts, position by position."""

    def __init__(self, seqs: list[str], order: int) -> None:
        self.counts = brute_counts(seqs, order)
        # Kneser-Ney's continuation counts: distinct bases b before h' with c(b h', x) > 0
        self.cont = [Counter({(h, x): sum(1 for b in BASES if self.counts[j + 1][(b + h, x)] > 0)
                              for h, x in {(k[0][1:], k[1]) for k in self.counts[j + 1]}})
                     for j in range(order)]
        self.raw_d = [brute_kn_discounts(c) for c in self.counts]
        self.cont_d = [brute_kn_discounts(c) for c in self.cont]

    def prob(self, smoothing: str, context: str, base: str) -> float:
        """p(base | context) under ``smoothing``, the model's top order being ``len(context)``."""
        top = len(context)
        if smoothing == "add-one":
            total = sum(self.counts[top][(context, b)] for b in BASES)
            return (self.counts[top][(context, base)] + 1) / (total + 4)
        lower = 0.25
        for j in range(top + 1):
            h = context[top - j:]
            kn_lower = smoothing == "kneser-ney" and j < top
            table = self.cont[j] if kn_lower else self.counts[j]
            row = {b: table[(h, b)] for b in BASES}
            total = sum(row.values())
            if total == 0:
                continue
            if smoothing == "witten-bell":
                seen = sum(1 for v in row.values() if v > 0)
                lower = (row[base] + seen * lower) / (total + seen)
            elif smoothing == "kneser-ney":
                d = self.cont_d[j] if kn_lower else self.raw_d[j]
                freed = sum(d[min(v, 3)] for v in row.values())
                lower = (row[base] - d[min(row[base], 3)] + freed * lower) / total
            else:  # dirichlet-B
                beta = float(smoothing.split("-")[1])
                lower = (row[base] + beta * lower) / (total + beta)
        return lower

    def bits(self, smoothing: str, seq: str, order: int) -> float:
        """Bits per base of ``seq`` from its second base, each with its longest clean context <= order."""
        total, n = 0.0, 0
        for i in range(1, len(seq)):
            if seq[i] not in BASES:
                continue
            j = 0
            while j < order and j < i and seq[i - j - 1] in BASES:
                j += 1
            total -= math.log2(self.prob(smoothing, seq[i - j:i], seq[i]))
            n += 1
        return total / n


def packed(context: str) -> int:
    """The table index of a context string: the nearest base (the last) is the most significant."""
    return sum(BASES.index(c) * 4 ** m for m, c in enumerate(context))


@pytest.fixture(scope="module")
def worm(data_paths: DataPaths) -> str:
    """A real sequence: the first 60 kb of C. elegans chromosome I (htslib's test chunks)."""
    return decode(Reference(data_paths.ce_fasta).tokens("CHROMOSOME_I")[:60_000])


# --- counting --------------------------------------------------------------------------------------


@pytest.mark.data
def test_counts_match_a_brute_force_count_of_both_strands(worm: str) -> None:
    seq = worm[:8_000] + "NN" + worm[8_000:12_000] + "N" + worm[12_000:15_000]
    tables = count_kmers([encode(seq)], 6)
    brute = brute_counts([seq, reverse_complement(seq)], 6)
    for j, table in enumerate(tables):
        expected = np.zeros((4**j, 4), dtype=np.int64)
        for (context, base), n in brute[j].items():
            expected[packed(context), BASES.index(base)] = n
        assert np.array_equal(table, expected), f"order {j}"


@pytest.mark.data
def test_a_sequence_and_its_reverse_complement_give_the_same_counts(data_paths: DataPaths) -> None:
    mt = Reference(data_paths.ce_fasta).tokens("CHROMOSOME_MtDNA")
    rc = encode(reverse_complement(decode(mt)))
    for a, b in zip(count_kmers([mt], 8), count_kmers([rc], 8), strict=True):
        assert np.array_equal(a, b)
    one_strand = count_kmers([mt], 8, both_strands=False)
    assert int(one_strand[0].sum()) * 2 == int(count_kmers([mt], 8)[0].sum())
    assert not np.array_equal(one_strand[3], count_kmers([rc], 3, both_strands=False)[3])


@pytest.mark.data
def test_n_breaks_contexts_in_counts_and_in_scoring(worm: str) -> None:
    left, right = worm[:3_000], worm[3_000:6_000]
    joined = count_kmers([encode(left + "N" + right)], 5)
    apart = count_kmers([encode(left), encode(right)], 5)
    for a, b in zip(joined, apart, strict=True):
        assert np.array_equal(a, b)
    model = MarkovBaseline(5, smoothing="add-one", counts=joined)
    window = torch.from_numpy(encode(left[-20:] + "N" + right[:20]).astype(np.int64))[None]
    logp, n = model.log2_probs(window)  # (1, 40): the targets are tokens 1..40
    assert n == 39  # 41 tokens: the first is no target and the N (token 20) is not scored
    order0 = joined[0][0]
    assert logp[0, 19] == 0.0
    assert logp[0, 20] == pytest.approx(  # right after the N: order 0 alone
        math.log2((order0[BASES.index(right[0])] + 1) / (order0.sum() + 4)))
    assert logp[0, 25] == pytest.approx(math.log2(  # five bases after it: order 5 again
        (joined[5][packed(right[:5]), BASES.index(right[5])] + 1) / (joined[5][packed(right[:5])].sum() + 4)))


# --- the pick --------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", ["add-one", "witten-bell", "kneser-ney", "dirichlet-64"])
@pytest.mark.data
def test_validation_bits_and_the_pick_match_brute_force(worm: str, smoothing: str) -> None:
    train = [worm[:40_000], worm[40_000:50_000]]
    validation = worm[50_000:53_000] + "N" + worm[53_000:56_000]
    fit = fit_best_k([encode(s) for s in train], [encode(validation)], max_order=5, smoothing=smoothing)
    brute = Brute(train + [reverse_complement(s) for s in train], 5)
    expected = [brute.bits(smoothing, validation, k) for k in range(6)]
    assert fit.validation_bits[smoothing] == pytest.approx(expected, rel=1e-9)
    assert fit.order == 1 + int(np.argmin(expected[1:]))
    assert fit.validation_targets == len(validation) - 2  # the first base and the N are not scored
    everything = count_kmers([encode(s) for s in [*train, validation]], fit.order)
    assert all(np.array_equal(a, b) for a, b in zip(fit.model.counts, everything, strict=True))


@pytest.mark.data
def test_auto_picks_the_smoothing_and_order_with_the_lowest_validation_bits(worm: str) -> None:
    fit = fit_best_k([encode(worm[:45_000])], [encode(worm[45_000:50_000])], max_order=6)
    candidates = {(bits[k], name, k) for name, bits in fit.validation_bits.items() for k in range(1, 7)}
    assert len(fit.validation_bits) > 1
    assert min(candidates)[1:] == (fit.smoothing, fit.order)
    assert fit.model.smoothing == fit.smoothing and fit.model.order == fit.order


def _order_two_chain(seed: int) -> tuple[np.ndarray, float]:
    """Transition rows p(x | two previous bases) and the chain's entropy rate in bits."""
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(4, 0.3), size=16)  # state = 4 * (base two back) + (base before)
    step = np.zeros((16, 16))
    for state, x in itertools.product(range(16), range(4)):
        step[state, (state % 4) * 4 + x] = rows[state, x]
    values, vectors = np.linalg.eig(step.T)
    stationary = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    stationary /= stationary.sum()
    entropy = -(stationary[:, None] * rows * np.log2(rows)).sum()
    return rows, float(entropy)


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cdf, draws = rows.cumsum(axis=1), rng.random(n)
    out, state = np.empty(n, dtype=np.uint8), 0
    for i in range(n):
        x = min(int(np.searchsorted(cdf[state], draws[i])), 3)
        out[i], state = x, (state % 4) * 4 + x
    return out + 5  # token ids of A, C, G, T


def test_a_known_order_two_chain_gives_order_at_least_two_and_its_entropy_rate() -> None:
    rows, entropy = _order_two_chain(seed=3)
    train, validation, test = _sample(rows, 300_000, 1), _sample(rows, 60_000, 2), _sample(rows, 65_600, 4)
    fit = fit_best_k([train], [validation], max_order=6, both_strands=False)
    windows = torch.from_numpy(test.astype(np.int64)).view(64, 1025)
    assert fit.order >= 2
    assert fit.validation_bits[fit.smoothing][1] > entropy + 0.05  # the chain is not order 1
    assert fit.bits_per_base(windows) == pytest.approx(entropy, abs=0.02)


# --- the reference baseline and its cache ----------------------------------------------------------


def test_validation_is_the_end_of_the_allowed_sequence() -> None:
    allowed = allowed_intervals({"a": 1_000, "b": 300}, [Region(contig="b", start=100, end=200)])
    rest, held = split_validation(allowed, 250)
    assert [(i.contig, i.start, i.end) for i in held] == [("a", 950, 1000), ("b", 0, 100), ("b", 200, 300)]
    assert [(i.contig, i.start, i.end) for i in rest] == [("a", 0, 950)]


@pytest.mark.data
def test_the_cache_returns_the_same_baseline_and_a_changed_region_misses(data_paths: DataPaths,
                                                                        tmp_path: Path) -> None:
    fasta = data_paths.ce_fasta
    excluded = [Region(contig="CHROMOSOME_I", start=900_000, end=1_009_800)]

    def build(exclude: list[Region]) -> ReferenceBaseline:
        return reference_baseline(fasta, exclude=exclude, cache=tmp_path, max_order=8,
                                  validation_bases=40_000)

    built, again = build(excluded), build(excluded)
    assert not built.from_cache and again.from_cache and again.cache_path == built.cache_path
    assert (again.fit.order, again.fit.smoothing, again.validation) == (built.fit.order, built.fit.smoothing,
                                                                        built.validation)
    assert again.fit.validation_bits == built.fit.validation_bits
    assert all(np.array_equal(a, b) for a, b in zip(again.model.counts, built.model.counts, strict=True))
    ref = Reference(fasta)
    windows = tile_windows({"CHROMOSOME_I": ref.tokens("CHROMOSOME_I")}, excluded, window=256, count=16,
                           max_n_fraction=0.5)
    assert again.model.bits_per_base(windows) == built.model.bits_per_base(windows)
    # exactly the allowed sequence is counted: the excluded region never is
    allowed = allowed_intervals(ref.contigs, excluded)
    pieces = [ref.tokens(i.contig)[i.start:i.end] for i in allowed]
    assert int(built.model.counts[0].sum()) == 2 * sum(len(p) for p in pieces)
    held = {(r.contig, r.start, r.end) for r in built.validation}
    rest, _ = split_validation(allowed, 40_000)
    assert all(r.contig != "CHROMOSOME_I" or r.end <= 900_000 for r in built.validation)
    assert sum(e - s for _, s, e in held) == 40_000
    recount = count_kmers([ref.tokens(i.contig)[i.start:i.end] for i in rest], built.fit.order)
    extra = count_kmers([ref.tokens(r.contig)[r.start:r.end] for r in built.validation], built.fit.order)
    assert all(np.array_equal(m, a + b) for m, a, b in zip(built.model.counts, recount, extra, strict=True))
    moved = [Region(contig="CHROMOSOME_I", start=800_000, end=1_009_800)]
    other = build(moved)
    assert not other.from_cache and other.cache_path != built.cache_path
    assert int(other.model.counts[0].sum()) == int(built.model.counts[0].sum()) - 2 * 100_000


# --- reported beside the model ---------------------------------------------------------------------


@pytest.mark.data
def test_the_run_report_has_the_baseline_on_the_servers_heldout_windows(data_paths: DataPaths,
                                                                        tmp_path: Path) -> None:
    from fedgenome.configs.schema import FederationConfig
    from fedgenome.configs.validation import validate
    from fedgenome.server.report import RoundRecord, RunReport
    from fedgenome.server.rounds import Federation

    config = {"run-dir": str(tmp_path / "run"), "reference": str(data_paths.reference), "eval-windows": 4}
    fed = validate(FederationConfig, config, source="test")
    federation = Federation(fed)
    bits = federation.heldout_bits()
    federation.report.add(RoundRecord(round=1, train_loss=1.4, heldout_bits_per_base=bits))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    markov = BaselineScore.from_json(report)
    assert markov is not None and markov == federation.markov and 1 <= markov.order <= 12
    assert report[PRIVACY_KEY] == PRIVACY_NOTE
    baseline = reference_baseline(data_paths.reference, exclude=[Region.parse(fed.holdout)])
    assert markov.bits_per_base == baseline.model.bits_per_base(federation.eval_windows)
    assert markov.bits_per_base < report["initial_bits_per_base"]
    assert RunReport.load(tmp_path / "run", report["config"]).markov == markov  # kept on resume


def test_the_demo_summary_has_the_models_final_bits_the_baselines_and_their_difference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedgenome.experiments.demo import MODEL_MINUS_MARKOV, print_summary, summarize

    run_dir, markov = tmp_path / "run", BaselineScore(1.84, 11, "dirichlet-256")
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"last_round": 2, "checkpoint": str(run_dir / "ckpt")}))
    rounds = [{"round": r, "heldout_bits_per_base": b, "epsilon": {}} for r, b in ((1, 1.97), (2, 1.95))]
    report = {"config": {}, "initial_bits_per_base": 2.0, "rounds": rounds}
    (run_dir / "report.json").write_text(json.dumps({**report, **markov.to_json()}))
    summary = summarize(run_dir, [], seconds=60.0)
    assert BaselineScore.from_json(summary) == markov
    assert summary[MODEL_MINUS_MARKOV] == pytest.approx(1.95 - 1.84)
    print_summary(summary)
    out = " ".join(capsys.readouterr().out.split())
    assert "best-k Markov baseline (order 11, dirichlet-256): 1.8400" in out
    assert "costs no privacy" in out and "model - baseline: +0.1100 bits per base" in out
    for path in ("final", "ledgers"):  # an older report, without the baseline, still summarizes
        shutil.rmtree(run_dir / path)
    (run_dir / "report.json").write_text(json.dumps(report))
    old = summarize(run_dir, [], seconds=60.0)
    assert BaselineScore.from_json(old) is None and old[MODEL_MINUS_MARKOV] is None
    print_summary(old)
    assert "Markov" not in capsys.readouterr().out
