"""``bench/gpu.py`` runs on a CPU in seconds, with no data, and its FLOP count is the stated formula."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedgenome.configs.schema import Preset
from fedgenome.shared.model import GenomeLM

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_bench_runs_on_a_cpu_and_reports_every_figure(tmp_path: Path, tiny: Preset) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--steps", "2",
           "--warmup", "1", "--batch", "3", "--peak-tflops", "2.0", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"FEDGENOME_CACHE": str(tmp_path / "no-cache"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["preset"] == "tiny" and got["device"].startswith("cpu")
    assert got["tokens_per_step"] == 3 * tiny.data.windows_per_patient * tiny.data.window
    assert got["plain_s"] > 0 and got["dp_s"] > 0
    assert got["dp_over_plain"] == got["dp_s"] / got["plain_s"]
    assert got["mfu"] == got["achieved_tflops"] / 2.0
    assert not (tmp_path / "no-cache").exists()  # it fetched nothing


def test_flops_per_token_counts_parameters_and_causal_attention(tiny: Preset) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from gpu import flops_per_token  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    model = GenomeLM(tiny.model.model_copy(update={"markov_prior": False}))
    attention_layers = tiny.model.n_layer - tiny.model.n_layer // tiny.model.conv_every
    expected = 6 * model.num_params() + 6 * attention_layers * 128 * tiny.model.d_model
    assert flops_per_token(model, 128) == expected
