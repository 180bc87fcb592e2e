"""The pretrained checkpoints that ship with fedgenome: ``<preset>/`` (weights, config, model card).

They are trained on public sequence only (see the model card of each), so a federation can start
from them without spending privacy; ``fedgenome demo`` does.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
MODELS_DIR = Path(__file__).resolve().parent


def shipped_checkpoint(preset: str) -> Path | None:
    """The shipped pretrained checkpoint of ``preset`` (``models/<preset>``), or None (logged)."""
    path = MODELS_DIR / preset
    if (path / "model.safetensors").is_file():
        return path
    log.warning("no pretrained checkpoint for preset %s in %s: the run starts from random weights",
                preset, MODELS_DIR)
    return None
