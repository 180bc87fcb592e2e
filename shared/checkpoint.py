"""Checkpoints: a directory with ``model.safetensors``, ``config.json`` and the Markov baseline.

``config.json`` holds the model config (enough to rebuild the model) and free-form metadata (the
data settings, the reference and held-out regions, training statistics). A checkpoint directory is
written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedgenome.configs.errors import IncompatibleModelError, InputFileError
from fedgenome.configs.schema import ModelConfig, Region
from fedgenome.configs.validation import validate
from fedgenome.shared.atomic import atomic_dir
from fedgenome.shared.markov import MarkovBaseline
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.model import GenomeLM

FORMAT = "fedgenome-checkpoint/1"
PRIOR_KEY = "markov_prior"  # config.json: the fingerprint of the Markov prior the weights fit


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint."""

    model: GenomeLM
    meta: dict[str, Any]
    markov: MarkovBaseline | None


def save_checkpoint(path: Path, model: GenomeLM, *, meta: dict[str, Any],
                    markov: MarkovBaseline | None = None, dtype: torch.dtype = torch.float32,
                    extra: Callable[[Path], None] | None = None) -> None:
    """Write ``model``, its config, ``meta`` and ``markov`` to directory ``path``, whole or not at all.

    Weights are stored as ``dtype`` (float32, or float16 to halve a checkpoint that ships) and
    loaded back as float32. ``extra`` may write more files into the directory being built.
    """
    with atomic_dir(path) as tmp:
        write_checkpoint(tmp, model, meta=meta, markov=markov, dtype=dtype, extra=extra)


def write_checkpoint(directory: Path, model: GenomeLM, *, meta: dict[str, Any],
                     markov: MarkovBaseline | None = None, dtype: torch.dtype = torch.float32,
                     extra: Callable[[Path], None] | None = None) -> None:
    """Write a checkpoint's files into the existing ``directory`` (a staging one, made by the caller).

    Raises:
        InputFileError: A file could not be written (a full disk, say); the message says which.
    """
    state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"format": FORMAT, "model": model.config.model_dump(), "meta": meta,
              PRIOR_KEY: None if model.prior is None else model.prior.fingerprint}
    try:
        save_file(state, str(directory / "model.safetensors"))
        if markov is not None:
            save_file(markov.state(), str(directory / "markov.safetensors"))
        (directory / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        if extra is not None:
            extra(directory)
    except (OSError, SafetensorError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputFileError(f"{directory.parent}: cannot write the checkpoint ({why}); free space "
                             "or choose another --out") from None


def load_checkpoint(path: Path, *, device: torch.device | str = "cpu", reference: Path | None = None,
                    exclude: Sequence[Region] | None = None) -> Checkpoint:
    """Rebuild the model of a checkpoint directory, with its metadata and Markov baseline.

    A model with a Markov prior gets it rebuilt from ``reference`` (default: the reference the
    checkpoint names) minus ``exclude`` (default: the checkpoint's held-out regions), and checked
    against the prior its weights were trained with.
    """
    config_path, weights = path / "config.json", path / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise InputFileError(f"{path}: not a checkpoint (needs config.json and model.safetensors); "
                             "pass a directory written by 'fedgenome train'")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{config_path}: unreadable ({exc}); the checkpoint is damaged") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InputFileError(f"{config_path}: unknown checkpoint format; expected {FORMAT}")
    model_config = validate(ModelConfig, config["model"], source=str(config_path))
    meta = config.get("meta", {})
    ref = reference or (Path(meta["reference"]) if meta.get("reference") else None)
    held = [Region(**r) for r in meta.get("holdout", [])] if exclude is None else list(exclude)
    model = build_model(model_config, reference=ref, exclude=held, fingerprint=config.get(PRIOR_KEY))
    load_weights(model, _read(weights), source=str(weights))
    markov_path = path / "markov.safetensors"
    markov = MarkovBaseline.from_state(_read(markov_path)) if markov_path.is_file() else None
    return Checkpoint(model=model.to(device), meta=meta, markov=markov)


@dataclass(frozen=True)
class InitialCheckpoint:
    """The checkpoint a run starts from: its model, where it is, and the SHA-256 of its weights."""

    model: GenomeLM
    path: Path
    sha256: str
    """:func:`state_sha256` of the model's weights (fp32), what ledgers and reports record."""

    def record(self) -> dict[str, str]:
        """What a report or checkpoint's metadata records: ``{"path", "sha256"}``."""
        return {"path": str(self.path), "sha256": self.sha256}


def load_initial(path: Path, *, model: ModelConfig, reference: Path | None = None,
                 exclude: Sequence[Region] | None = None) -> InitialCheckpoint:
    """Load the checkpoint a run starts from; its model config must be ``model``.

    ``reference`` and ``exclude`` are the run's: a Markov prior is rebuilt from them and must be
    the one the checkpoint was trained with.

    Raises:
        InputFileError: ``path`` is not a readable checkpoint.
        IncompatibleModelError: Its model config differs from ``model`` (naming the first key).
    """
    ckpt = load_checkpoint(path, reference=reference, exclude=exclude)
    theirs, ours = ckpt.model.config.model_dump(), model.model_dump()
    differs = [k for k in ours if theirs.get(k) != ours[k]]
    if differs:
        key = differs[0]
        raise IncompatibleModelError(
            f"{path}: the checkpoint's model has {key} = {theirs.get(key)!r}, the preset's model "
            f"{ours[key]!r}; start from a checkpoint of the same model, or choose its preset")
    return InitialCheckpoint(ckpt.model, path.resolve(), state_sha256(ckpt.model.state_dict()))


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model``, naming the first missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise IncompatibleModelError(f"{source}: tensor '{name}' is missing; the weights are "
                                         "from a different model configuration")
        if state[name].shape != tensor.shape:
            raise IncompatibleModelError(
                f"{source}: tensor '{name}' has shape {tuple(state[name].shape)}, the model "
                f"expects {tuple(tensor.shape)}; use the matching model config")
    extra = sorted(set(state) - set(own))
    if extra:
        raise IncompatibleModelError(f"{source}: unexpected tensor '{extra[0]}'; the weights are "
                                     "from a different model configuration")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValidationError) as exc:
        raise InputFileError(f"{path}: unreadable safetensors file ({exc}); the checkpoint is "
                             "damaged") from None


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
