"""``fedgenome audit report``: a run's ledgers against its run report, as HTML with plots and JSON."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from matplotlib.image import imread

from fedgenome.audit.plots import heldout_plot
from fedgenome.audit.report import build_report, write_report
from fedgenome.audit.sources import audit_ledgers
from fedgenome.configs.errors import ConfigError
from fedgenome.privacy.accounting import epsilon
from fedgenome.privacy.keys import generate_key, write_public_key
from fedgenome.privacy.ledger.core import Ledger, head_path
from fedgenome.privacy.mechanism import Mechanism
from fedgenome.shared.markov_fields import PRIVACY_NOTE, BaselineScore
from tests.auditkit import DELTA, SIGMA, Q, digest, write_ledger
from tests.helpers import run_cli

MARKOV = BaselineScore(1.87, 9, "dirichlet-256")  # a run report's Markov baseline


def make_run(run_dir: Path, keys: dict[str, ec.EllipticCurvePrivateKey]) -> dict[str, Ledger]:
    """A small run directory as the demo writes it: report.json, ledgers/, pki/sites/, a canary audit."""
    ledgers = {}
    for i, (site, key) in enumerate(sorted(keys.items())):
        ledgers[site] = write_ledger(run_dir / "ledgers" / f"{site}.jsonl", key, site=site,
                                     steps=100 + 50 * i, rounds=3, budget=8.0)
    write_run_report(run_dir, ledgers)
    (run_dir / "canary-audit.json").write_text(json.dumps(
        {"empirical_epsilon": 0.42, "theoretical_epsilon": 7.3, "m": 2,
         "canaries": [{"id": 0, "included": True, "loss": 1.2, "exposure": 3.5},
                      {"id": 1, "included": False, "loss": 1.4, "exposure": 0.5}]}))
    return ledgers


def write_run_report(run_dir: Path, ledgers: dict[str, Ledger]) -> None:
    """report.json for rounds 1-4 with the epsilons of the ledgers, and the sites' keys in pki/sites."""
    rounds = []
    for rnd in range(1, 5):
        eps = {site: next(e.epsilon for e in ledger.entries if e.round == rnd)
               for site, ledger in ledgers.items()}
        trained = sorted(eps) if rnd < 4 else []
        rounds.append({"round": rnd, "train_loss": 1.4 - 0.1 * rnd if trained else None,
                       "heldout_bits_per_base": 1.99 - 0.02 * rnd, "trained": trained,
                       "refused": [] if trained else sorted(eps), "failed": [], "dropped": [], "rejected": {},
                       "epsilon": eps, "update_norms": {}, "seconds": 1.0})
    (run_dir / "report.json").write_text(json.dumps(
        {"config": {"preset": "tiny", "num-server-rounds": 4}, "initial_bits_per_base": 2.0,
         **MARKOV.to_json(), "rounds": rounds}))
    for site, ledger in ledgers.items():
        write_public_key(run_dir / "pki" / "sites" / f"{site}.pub", ledger.public_key, comment=site)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_the_report_renders_with_plots_and_the_same_numbers_as_its_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    ledgers = make_run(run_dir, {"siteA": generate_key(), "siteB": generate_key()})
    code, out, _ = run_cli(["audit", "report", str(run_dir), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 0, out
    html = (tmp_path / "r.html").read_text()
    parser = _Images()
    parser.feed(html)
    parser.close()
    assert "Empirical canary audit" in parser.headings and "Ledgers" in parser.headings
    assert len(parser.sources) == 2
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        pixels = imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # not blank
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] and data["problems"] == [] and data["initial_bits_per_base"] == 2.0
    assert [r["heldout_bits_per_base"] for r in data["rounds"]] == pytest.approx([1.97, 1.95, 1.93, 1.91])
    assert data["canary_audit"]["empirical_epsilon"] == 0.42
    assert BaselineScore.from_json(data) == MARKOV  # the baseline beside the model, in the JSON
    flat = " ".join(html.split())
    assert f"{MARKOV.label}: <b>1.8700</b> bits per base" in flat
    assert escape(PRIVACY_NOTE) in flat
    points = [(r["round"], r["heldout_bits_per_base"]) for r in data["rounds"]]
    assert heldout_plot(points, initial=2.0) != heldout_plot(points, initial=2.0,
                                                             baseline=(MARKOV.label, MARKOV.bits_per_base))
    for site in data["sites"]:
        entries = ledgers[site["site"]].entries
        assert site["budget"] == 8.0 and site["budget_source"].startswith("ledger (signed")
        assert site["epsilon_by_round"] == [{"round": e.round, "epsilon": e.epsilon} for e in entries]
        assert site["epsilon_opacus"] == pytest.approx(entries[-1].epsilon, rel=1e-9)
        assert f"{entries[-1].epsilon:.4f}" in html


def test_the_report_catches_a_ledger_truncated_with_an_older_head(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Verifies alone (the head was replayed), but the server received later epsilons."""
    run_dir = tmp_path / "run"
    path = run_dir / "ledgers" / "siteA.jsonl"
    ledger = write_ledger(path, generate_key(), steps=100, rounds=2, refuse_after=False)
    snapshot = path.read_bytes(), head_path(path).read_bytes()  # an honest copy of that moment
    common = {"sample_rate": Q, "noise_multiplier": SIGMA, "max_grad_norm": 1.0, "delta": DELTA,
              "accountant": "rdp", "epsilon_budget": 8.0}
    ledger.append(round=3, status="trained", local_steps=100, update_sha256=digest(3), **common,  # type: ignore[arg-type]
                  epsilon=epsilon(history=[Mechanism(SIGMA, Q, 300)], delta=DELTA))
    ledger.append(round=4, status="refused", local_steps=0, update_sha256=None, epsilon=ledger.epsilon,
                  **common)  # type: ignore[arg-type]
    write_run_report(run_dir, {"siteA": ledger})
    path.write_bytes(snapshot[0])
    head_path(path).write_bytes(snapshot[1])
    assert audit_ledgers([path], pki=run_dir / "pki").ok
    report = build_report(run_dir)
    assert not report.ok
    assert [p.line() for p in report.result.problems] == [
        "site siteA, round 3: the server received epsilon "
        f"{report.data['rounds'][2]['epsilon']['siteA']:.6g}, but the ledger has no entry for this round",
        "site siteA, round 4: the server received epsilon "
        f"{report.data['rounds'][3]['epsilon']['siteA']:.6g}, but the ledger has no entry for this round"]
    code, out, _ = run_cli(["audit", "report", str(run_dir)], capsys)
    assert code == 4 and "site siteA, round 3:" in out
    assert (run_dir / "audit-report.html").exists() and (run_dir / "audit-report.json").exists()


def test_the_report_refuses_to_overwrite_the_run_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, {"siteA": generate_key()})
    (run_dir / "state.json").write_text("{}")
    with pytest.raises(ConfigError, match="would replace the run report"):
        write_report(build_report(run_dir), run_dir / "report.html")


_WITHOUT_MATPLOTLIB = '''
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
from fedgenome.cli import main

for args in sys.argv[1:]:
    try:
        main(args.split("|"))
    except SystemExit as exc:
        print(f"exit {exc.code}", flush=True)
        print(f"exit {exc.code}", file=sys.stderr, flush=True)
print("matplotlib imported" if any(m.split(".")[0] == "matplotlib" for m in sys.modules) else "no matplotlib")
'''


def test_without_matplotlib_verify_works_and_report_says_how_to_install_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, {"siteA": generate_key()})
    ledger = str(run_dir / "ledgers" / "siteA.jsonl")
    verify = "|".join(["audit", "verify", ledger, "--pki", str(run_dir / "pki")])
    report = "|".join(["audit", "report", str(run_dir)])
    done = subprocess.run([sys.executable, "-c", _WITHOUT_MATPLOTLIB, verify, report],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout.splitlines()[-1] == "no matplotlib", done.stderr
    assert "all 1 ledger(s) verified" in done.stdout
    assert [line for line in done.stdout.splitlines() if line.startswith("exit")] == ["exit 0", "exit 2"]
    _, report_err = done.stderr.split("exit 0\n")  # what 'audit report' printed: one line
    assert report_err.strip().splitlines() == [
        "fedgenome: error: plots need matplotlib: pip install 'fedgenome[audit]'", "exit 2"]
    assert not (run_dir / "audit-report.html").exists() and not (run_dir / "audit-report.json").exists()
