"""The built wheel: one top-level package, and a fresh virtual environment with only it (and torch)
runs the demo's federation outside any checkout, next to files named like the design's folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fedgenome.shared.fetch import DataPaths

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of the checkout (the project alone, in pip's isolated build environment)."""
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)  # no stale module of an earlier build
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, timeout=600)
    (wheel,) = out.glob("fedgenome-*.whl")
    return wheel


def top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


def shadowing_folder(where: Path) -> Path:
    """A working directory whose ``server.py``, ``client.py`` and ``configs/`` would shadow bare names."""
    where.mkdir()
    for name in ("server.py", "client.py"):
        (where / name).write_text("raise SystemExit('the working directory was imported')\n")
    (where / "configs").mkdir()
    (where / "configs" / "__init__.py").write_text("raise SystemExit('configs/ was imported')\n")
    return where


@pytest.mark.integration
@pytest.mark.data
def test_a_wheel_install_runs_a_one_round_demo_outside_any_checkout(tmp_path: Path,
                                                                   data_paths: DataPaths) -> None:
    wheel = build_wheel(tmp_path / "dist")
    version = wheel.name.split("-")[1]
    assert top_level_names(wheel) == {"fedgenome", f"fedgenome-{version}.dist-info"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for packaged in ("fedgenome/shared/flower_app/pyproject.toml", "fedgenome/configs/presets/tiny.toml",
                     "fedgenome/models/small/model.safetensors", "fedgenome/client/app.py"):
        assert packaged in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True, timeout=900)
    subprocess.run([*pip, str(wheel)], check=True, timeout=900)

    work = shadowing_folder(tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    fedgenome = str(venv / "bin" / "fedgenome")
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import fedgenome.server.app as m; print(m.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    demo = subprocess.run([fedgenome, "demo", "--preset", "tiny", "--rounds", "1", "--local-steps", "2",
                           "--name", "from-wheel", "--cache", str(data_paths.cache)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    # The demo's whole sequence (experiments/runner.py): one submission, its round, the summary, the
    # final checkpoint, the ledgers and the PKI's public part (no private key) in runs/NAME/.
    printed = " ".join(demo.stdout.split())
    assert printed.count(" submitted: 1 rounds") == 1 and "round 1: 3 sites trained" in printed, printed
    run_dir = work / "runs" / "from-wheel"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1 and len(summary["sites"]) == 3, summary
    assert all(0 < site["epsilon"] <= site["budget"] for site in summary["sites"].values()), summary
    assert summary["security"]["tls"] and len(summary["security"]["authenticated_sites"]) == 3
    assert (run_dir / ".fedgenome-demo").exists() and (run_dir / "final").is_dir()
    assert (run_dir / "pki" / "ca.crt").is_file() and not list((run_dir / "pki").rglob("*.key"))
    ledgers = sorted(str(p) for p in (run_dir / "ledgers").glob("*.jsonl"))
    assert len(ledgers) == 3
    verify = subprocess.run([fedgenome, "audit", "verify", "--pki", str(run_dir / "pki"), *ledgers],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]


def test_files_named_like_the_design_folders_in_the_working_directory_break_no_command(
        tmp_path: Path) -> None:
    work = shadowing_folder(tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    commands = [[sys.executable, "-m", "fedgenome", "--help"],
                [sys.executable, "-m", "fedgenome", "pki", "init", "--out", str(tmp_path / "pki"),
                 "--host", "localhost"]]
    for command in commands:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command[3:]}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
        assert "was imported" not in done.stdout + done.stderr
    assert (tmp_path / "pki" / "ca.crt").is_file()
