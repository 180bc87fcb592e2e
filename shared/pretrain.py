"""Public pretraining: the genome LM trained centrally, without DP, on public sequence; resumable.

Pretraining spends no privacy: it reads only public FASTA (the reference genome minus every
held-out region, or any other public sequence), never a patient's genome. A model with a Markov
prior starts as exactly the best-k baseline of the first FASTA (an indexed reference) minus the
excluded regions, its network silent (:meth:`fedgenome.shared.model.GenomeLM.silence`); AdamW with
the preset's
warm-up and cosine schedule then trains the network. Every ``checkpoint_every`` steps the
checkpoint directory is rewritten whole: the weights, ``config.json``, and ``resume/`` (optimizer
moments, step, the window stream's and torch's random state), so an interrupted run continues where
it stopped, with the same windows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import Preset, Region
from fedgenome.shared.checkpoint import load_weights, save_checkpoint
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.corpus import Corpus, WindowStream
from fedgenome.shared.datasets import tile_windows
from fedgenome.shared.markov_prior import build_model
from fedgenome.shared.model import GenomeLM
from fedgenome.shared.train import evaluate, lr_at, make_optimizer, pick_device, train_step

log = logging.getLogger(__name__)
RESUME = "resume"
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class PretrainSettings:
    """What to pretrain and where; ``command`` is recorded in the model card."""

    preset_name: str
    preset: Preset
    out: Path
    command: str
    checkpoint_every: int = 200
    float16: bool = False  # store the weights as float16 (a checkpoint that ships with the project)


@dataclass(frozen=True)
class Scores:
    """Held-out bits per base of the model, and of the k-mer prior it started from, per region."""

    model: dict[str, float]
    prior: dict[str, float]
    windows: dict[str, int]


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run did and where its checkpoint is."""

    checkpoint: Path
    steps: int
    tokens: int
    """Training tokens seen (steps times batch size times window)."""
    seconds: float
    scores: Scores
    curve: list[dict[str, float]] = field(default_factory=list)


def _fingerprint(corpus: Corpus, settings: PretrainSettings) -> str:
    """What a resumed run must share with the one that wrote the resume state."""
    text = json.dumps({"preset": settings.preset.model_dump(),
                       "sources": [s.sha256 for s in corpus.sources],
                       "excluded": [r.model_dump() for r in corpus.excluded],
                       "validation": [r.model_dump() for r in corpus.validation]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _region_key(region: Region) -> str:
    return f"{region.contig}:{region.start}-{region.end}"


def eval_sets(corpus: Corpus, preset: Preset) -> dict[str, torch.Tensor]:
    """Evaluation windows of the validation slice and of every excluded region the corpus holds."""
    data = preset.data
    sets = {}
    for kind, regions in (("validation", corpus.validation), ("held-out", corpus.excluded)):
        for region in regions:
            if region.contig in corpus.seqs:
                sets[f"{kind} {_region_key(region)}"] = tile_windows(
                    corpus.seqs, [region], window=data.window, count=data.eval_windows,
                    max_n_fraction=data.max_n_fraction)
    return sets


def _score(model: GenomeLM, sets: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    return {name: round(evaluate(model, w, device=device).bits_per_base, 5) for name, w in sets.items()}


def _new_model(corpus: Corpus, settings: PretrainSettings) -> GenomeLM:
    """The preset's model, its Markov prior (if any) that of the first FASTA minus the exclusions."""
    torch.manual_seed(settings.preset.train.seed)
    return build_model(settings.preset.model, reference=Path(corpus.sources[0].path),
                       exclude=corpus.excluded)


def _save(model: GenomeLM, optimizer: torch.optim.Optimizer, stream: WindowStream, *,
          settings: PretrainSettings, meta: dict[str, Any], step: int) -> None:
    """Rewrite the checkpoint directory: weights, config.json and the resume state."""
    def resume(tmp: Path) -> None:
        state_dir = tmp / RESUME
        state_dir.mkdir()
        torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
        save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
                  str(state_dir / "model.safetensors"))  # float32 even when the weights ship in float16
        (state_dir / "state.json").write_text(json.dumps(
            {"step": step, "fingerprint": meta["pretrain"]["fingerprint"], "stream": stream.state(),
             "torch_rng": torch.get_rng_state().tolist()}) + "\n")
        if "bits_per_base" in meta["pretrain"]:
            (tmp / "MODEL_CARD.md").write_text(model_card(model, meta))
    save_checkpoint(settings.out, model, meta=meta, extra=resume,
                    dtype=torch.float16 if settings.float16 else torch.float32)


def _resume_state(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The resume state in ``out`` (None for a new run); refuses another run's state."""
    state_path = out / RESUME / "state.json"
    if not state_path.is_file():
        if out.exists():
            raise ConfigError(f"{out} exists and holds no pretraining to resume; choose another --out")
        return None
    state: dict[str, Any] = json.loads(state_path.read_text())
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{out} holds a pretraining run with other data or settings; resume it with "
                          "the same FASTA, --exclude, preset and options, or choose another --out")
    return state


def _resume(model: GenomeLM, optimizer: torch.optim.Optimizer, stream: WindowStream, *, out: Path,
            state: dict[str, Any]) -> dict[str, Any]:
    """Load weights, optimizer, window stream and torch's generator; the metadata written so far."""
    load_weights(model, load_file(str(out / RESUME / "model.safetensors")), source=str(out))
    optimizer.load_state_dict(torch.load(out / RESUME / "optimizer.pt", weights_only=True))
    stream.restore(state["stream"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    log.info("resuming pretraining in %s at step %d", out, state["step"])
    meta: dict[str, Any] = json.loads((out / "config.json").read_text())["meta"]
    return meta


def pretrain(corpus: Corpus, settings: PretrainSettings, *,
             on_step: StepCallback | None = None) -> PretrainResult:
    """Pretrain (or resume pretraining) the preset's model on ``corpus``; write the checkpoint."""
    preset, cfg = settings.preset, settings.preset.train
    device = pick_device(cfg.device)
    fingerprint = _fingerprint(corpus, settings)
    state = _resume_state(settings.out, fingerprint)
    model = _new_model(corpus, settings).to(device)
    optimizer = make_optimizer(model, cfg)
    stream = WindowStream(corpus, window=preset.data.window, max_n_fraction=preset.data.max_n_fraction,
                          seed=cfg.seed)
    first, meta = 0, None
    if state is not None:
        first, meta = int(state["step"]), _resume(model, optimizer, stream, out=settings.out, state=state)
    sets = eval_sets(corpus, preset)
    if meta is None:
        meta = _meta(corpus, settings, fingerprint)
        meta["pretrain"]["prior_bits_per_base"] = _score(model, sets, device)
    tokens_per_step = cfg.batch_size * preset.data.window
    start, seconds_before = time.perf_counter(), float(meta["pretrain"].get("seconds", 0.0))
    for step in range(first, cfg.steps):
        loss = train_step(model, optimizer, stream.batch(cfg.batch_size), lr=lr_at(step, cfg),
                          grad_clip=cfg.grad_clip, device=device)
        if on_step is not None:
            on_step(step + 1, loss)
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0:
            meta["pretrain"]["curve"].append({"step": done, "tokens": done * tokens_per_step,
                                              "loss": loss, **_score(model, sets, device)})
        if done % settings.checkpoint_every == 0 or done == cfg.steps:
            meta["pretrain"].update(steps=done, tokens=done * tokens_per_step,
                                    seconds=round(seconds_before + time.perf_counter() - start, 1))
            if done == cfg.steps:
                meta["pretrain"]["bits_per_base"] = _score(model, sets, device)
            _save(model, optimizer, stream, settings=settings, meta=meta, step=done)
    final = meta["pretrain"].get("bits_per_base") or _score(model, sets, device)
    scores = Scores(model=final, prior=meta["pretrain"]["prior_bits_per_base"],
                    windows={k: len(v) for k, v in sets.items()})
    return PretrainResult(settings.out, cfg.steps, cfg.steps * tokens_per_step,
                          float(meta["pretrain"].get("seconds", 0.0)), scores, meta["pretrain"]["curve"])


def _meta(corpus: Corpus, settings: PretrainSettings, fingerprint: str) -> dict[str, Any]:
    """config.json's metadata: what ``fedgenome eval`` needs, and how the model was made."""
    preset = settings.preset
    return {"preset": settings.preset_name, "data": preset.data.model_dump(),
            "train": preset.train.model_dump(), "reference": corpus.sources[0].path,
            "holdout": [r.model_dump() for r in corpus.excluded],
            "pretrain": {"command": settings.command, "fingerprint": fingerprint,
                         "sources": [asdict(s) for s in corpus.sources],
                         "validation": [r.model_dump() for r in corpus.validation],
                         "train_bases": corpus.train_bases, "seed": preset.train.seed,
                         "curve": [],
                         "created": utc_now_text()}}


def _prior_text(model: GenomeLM) -> str:
    if model.prior is None:
        return "none"
    return (f"the best-k baseline of the first FASTA minus the excluded regions (order "
            f"{getattr(model.prior, 'order', '?')}, {getattr(model.prior, 'smoothing', '?')}; frozen, "
            f"fingerprint {model.prior.fingerprint}), rebuilt from that public FASTA wherever the "
            "model is loaded")


def model_card(model: GenomeLM, meta: dict[str, Any]) -> str:
    """MODEL_CARD.md of a pretrained checkpoint: how to reproduce it and what it scores."""
    pre, cfg = meta["pretrain"], model.config
    sources = "\n".join(f"  - `{s['path']}`: SHA-256 `{s['sha256']}`, {s['records']} record(s), "
                        f"{s['bases']:,} bases" for s in pre["sources"])
    names = list(pre["bits_per_base"])
    curve = "\n".join(f"| {point['step']:,} | {point['tokens']:,} | "
                      + " | ".join(f"{point.get(name, float('nan')):.4f}" for name in names) + " |"
                      for point in pre.get("curve", []))
    regions = ", ".join(_region_key(Region(**r)) for r in meta["holdout"]) or "none"
    rows = "\n".join(f"| {name} | {bits:.4f} | {pre['prior_bits_per_base'].get(name, float('nan')):.4f} |"
                     for name, bits in pre["bits_per_base"].items())
    return f"""# GenomeLM `{meta['preset']}`, pretrained on public sequence

Pretrained centrally, without differential privacy, on public sequence only: no patient's genome
was read, so it costs no privacy. Use it as the starting point of private training
(`fedgenome run -c initial-checkpoint=DIR`, `fedgenome train --dp --init DIR`).

## Reproduce

```
{pre['command']}
```

(`fedgenome data fetch` puts the reference in its cache, `~/.cache/fedgenome` by default.)

- Data:
{sources}
- Excluded (never trained on): {regions}; validation slice (held apart from training):
  {", ".join(_region_key(Region(**r)) for r in pre["validation"])}; {pre['train_bases']:,} training bases.
- Seed {pre['seed']}; {pre['steps']:,} steps of {meta['train']['batch_size']} windows of
  {meta['data']['window']} bases ({pre['tokens']:,} tokens), AdamW lr {meta['train']['lr']:g}, warm-up
  {meta['train']['warmup_steps']} steps, cosine to {meta['train']['min_lr_ratio']:g} x lr;
  {pre.get('seconds', 0) / 60:.1f} minutes of training.

## Model

{model.num_params():,} parameters: d_model {cfg.d_model}, {cfg.n_layer} blocks ({cfg.n_head} heads, a
convolution mixer in every {cfg.conv_every or 'no'}th block), window {meta['data']['window']}; Markov prior:
{_prior_text(model)}.

## Held-out figures (bits per base; lower is better; 2.0 is uniform guessing)

{meta['data']['eval_windows']} evenly spaced windows of {meta['data']['window']} bases of each region
(monitored, never used to pick the checkpoint: it is the last step's).

| windows | this model | at initialisation (its Markov prior alone) |
|---|---|---|
{rows}

Learning curve:

| step | tokens | {" | ".join(names)} |
|---|---|{"---|" * len(names)}
{curve}
"""
