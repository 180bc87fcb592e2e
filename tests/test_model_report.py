"""``fedgenome report``: the model report page of a real (tiny) checkpoint, self-contained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedgenome.experiments.checkpoint_eval import evaluate_checkpoint
from fedgenome.shared import run_layout as layout
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.sites import holdout_region
from fedgenome.shared.variant_labels import frequency_labels, write_labels
from tests.helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.data


def _run_dir(root: Path) -> Path:
    """A run directory whose report.json holds one round of site evaluations (the fields the
    server writes: ``site_bits`` and ``site_bits_std`` per site)."""
    root.mkdir()
    rounds = [dict.fromkeys(layout.ROUND_FIELDS) | {
        layout.ROUND: 2, layout.SITE_BITS: {"hospital-ceu": 1.83, "unseen-ibs": 2.4},
        layout.SITE_BITS_STD: {"hospital-ceu": 0.1, "unseen-ibs": 0.9}}]
    (root / layout.REPORT).write_text(json.dumps({layout.CONFIG: {"site-eval-clip": 3.0},
                                                  layout.ROUNDS: rounds}))
    return root


def test_the_report_holds_every_section_inline(tiny_checkpoint: Path, data_paths: DataPaths,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.tsv"
    write_labels(frequency_labels(data_paths, region=holdout_region(data_paths.reference))[:12], labels)
    out = tmp_path / "report.html"
    code, stdout, _ = run_cli(["report", str(tiny_checkpoint), "--labels", str(labels), "--run",
                               str(_run_dir(tmp_path / "run")), "--out", str(out)], capsys)
    assert code == 0 and str(out) in stdout
    page = out.read_text()
    held = evaluate_checkpoint(tiny_checkpoint)
    assert f"<td>{held.model_bits_per_base:.4f}</td>" in page
    assert held.baseline is not None and f"<td>{held.baseline.bits_per_base:.4f}</td>" in page
    assert "<b>unseen-ibs - hospital-ceu = 0.570 ± 0.906 bits per base</b>" in page
    for title in ("Held-out bits per base", "Private evaluation at the sites", "Explanation: 20:",
                  "Variant-effect benchmark"):
        assert title in page
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) == 3  # plots inline
    assert not re.search(r'(src|href)="https?:', page)  # nothing fetched when the page opens


def test_a_run_directory_without_a_report_is_one_line(tiny_checkpoint: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["report", str(tiny_checkpoint), "--run", str(tmp_path)], capsys)
    assert_one_line_error(code, err, f"--run {tmp_path}", "no report.json")
