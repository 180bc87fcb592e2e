"""What the federation benches share: their command line and the small run config they time."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def federation_args(description: str | None, *, preset: str, rounds: int,
                    local_steps: int) -> argparse.Namespace:
    """``--preset``, ``--rounds`` and ``--local-steps``, with this bench's defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--local-steps", type=int, default=local_steps)
    return parser.parse_args()


def bench_config(args: argparse.Namespace) -> dict[str, Any]:
    """The timed rounds' run config: 8 patients per private step, 8 evaluation windows."""
    return {"preset": args.preset, "num-server-rounds": args.rounds, "local-steps": args.local_steps,
            "patients-per-step": 8, "eval-windows": 8}


def work_dir(name: str) -> Path:
    """A fresh temporary directory for one bench's runs."""
    return Path(tempfile.mkdtemp(prefix=f"fedgenome-{name}-"))
