"""Frozen, validated configuration: model, data, training and site manifests; the only loaders.

Every config is a pydantic model with ``frozen=True`` and ``extra="forbid"``, built once at the edge
(CLI, TOML file, Flower run config). Validation errors become one-line :class:`ConfigError` messages
that name the key, the value and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedgenome.configs.contigs import contig_key
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.names import SITE_NAME_PATTERN, SITE_NAME_RULE
from fedgenome.configs.validation import read_toml, validate

PRESETS_DIR = Path(__file__).parent / "presets"
MAX_EPSILON = 100.0
"""The largest epsilon (budget or target) accepted: above it a DP guarantee says nothing."""
MAX_STEPS = 1_000_000
"""The most training steps a run may plan (a bound against a typo that trains until killed)."""
MAX_PARAMS = 10_000_000_000
"""The most parameters a model may have (about ten times the large preset)."""
MAX_SEED = 2**32 - 1
MAX_EVAL_POSITIONS = 256  # panel positions one site evaluation may be asked to score
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
"""Every config: immutable, no unknown keys, no coercion (true is not 1.0, "3" is not 3), finite."""


class _Frozen(BaseModel):
    model_config = _STRICT


class ModelConfig(_Frozen):
    """Shape of the genome language model (see ``shared/model.py``)."""

    vocab_size: int = Field(16, ge=10, le=1024, description="token ids; padded from the 10 used to 16")
    d_model: int = Field(256, gt=0, le=65_536, description="residual width")
    n_layer: int = Field(4, gt=0, le=1024, description="number of blocks")
    n_head: int = Field(4, gt=0, le=1024, description="attention heads; must divide d_model")
    mlp_ratio: int = Field(4, gt=0, le=64, description="MLP hidden width = mlp_ratio * d_model")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    conv_every: int = Field(0, ge=0, le=1024, description="every k-th block mixes by short "
                            "convolution; 0 = none")
    conv_kernel: int = Field(7, ge=2, le=128, description="kernel of the short depthwise convolution")
    rope_base: float = Field(10000.0, gt=1.0, le=1e12, description="base of the rotary position frequencies")
    markov_prior: bool = Field(False, description="add the best-k Markov baseline of the public "
                               "reference (minus the held-out regions) to the logits, frozen")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head != 0 or (self.d_model // self.n_head) % 2 != 0:
            raise ValueError(
                f"n_head={self.n_head} must divide d_model={self.d_model} into an even head size"
            )
        params = self.n_layer * (4 + 2 * self.mlp_ratio) * self.d_model**2
        if params > MAX_PARAMS:
            raise ValueError(f"d_model={self.d_model}, n_layer={self.n_layer}, mlp_ratio="
                             f"{self.mlp_ratio} make about {params:.2g} parameters, above the "
                             f"limit of {MAX_PARAMS:.0e}: lower d_model or n_layer")
        return self


class DataConfig(_Frozen):
    """How patients' genomes become training windows."""

    window: int = Field(1024, ge=16, le=1_048_576, description="bases per training window")
    windows_per_patient: int = Field(1, ge=1, le=1024, description="windows k drawn per unit and "
                                     "step (random positions, either haplotype); the unit's "
                                     "gradient is the mean over them, clipped once")
    rc_augment: bool = Field(True, description="reverse-complement half of the windows")
    max_n_fraction: float = Field(0.5, ge=0.0, lt=1.0, description="skip windows with more N")
    eval_windows: int = Field(64, gt=0, le=100_000, description="held-out windows evaluated "
                              "(evenly spaced)")


class TrainConfig(_Frozen):
    """Optimisation settings of the plain (non-private) trainer."""

    steps: int = Field(200, gt=0, le=MAX_STEPS)
    batch_size: int = Field(16, gt=0, le=65_536, description="patients per step, one window each")
    lr: float = Field(1e-3, gt=0.0, lt=1.0)
    weight_decay: float = Field(0.1, ge=0.0, le=100.0)
    warmup_steps: int = Field(20, ge=0, le=MAX_STEPS)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    grad_clip: float = Field(1.0, gt=0.0, le=1e6, description="global gradient-norm clip")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW, or SGD with momentum")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (optimizer = 'sgd')")
    eval_every: int = Field(0, ge=0, le=MAX_STEPS, description="held-out evaluation every n "
                            "steps; 0 = at end")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DPConfig(_Frozen):
    """Patient-level DP-SGD settings of a training run (the budget itself is the site's)."""

    noise_multiplier: float | None = Field(
        None, ge=0.0, le=1e6, description="Gaussian noise / clip norm; when set, target_epsilon "
        "is not used")
    target_epsilon: float | None = Field(
        None, gt=0.0, le=MAX_EPSILON, description="epsilon the planned steps should reach (used "
        "to calibrate sigma)")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, description="per-patient gradient clipping "
                                 "norm C")
    patients_per_step: int = Field(16, gt=0, le=10_000_000, description="expected Poisson batch: "
                                   "q = this / patients")
    grad_sample_mode: Literal["hooks", "ghost"] = Field(
        "hooks", description="per-sample gradients: Opacus hooks (lean backward), or ghost norms "
        "(two backward passes; one window per patient)")
    accountant: Literal["rdp", "prv"] = "rdp"
    secure_mode: bool = Field(False, description="cryptographically secure noise (needs torchcsprng)")

    @model_validator(mode="after")
    def _noise_or_target(self) -> DPConfig:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("set 'noise_multiplier', or 'target_epsilon' to calibrate it")
        return self


class Preset(_Frozen):
    """A named bundle of model, data and training settings (``configs/presets/*.toml``)."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    privacy: DPConfig = DPConfig(target_epsilon=8.0)


SECAGG_STRATEGIES = ("fedavg", "fedprox")
"""Strategies that need only the (weighted) sum of the updates, so they work under SecAgg+."""


class FederationConfig(BaseModel):
    """A federated run, from Flower's run config (``[tool.flwr.app.config]``, kebab-case keys)."""

    model_config = ConfigDict(**_STRICT, populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))

    preset: str = Field("tiny", description="name of a shipped preset (configs/presets); never a "
                        "path: a site opens only files its own node config and site.toml name")
    num_server_rounds: int = Field(3, gt=0, le=10_000, description="rounds of this run (or in "
                                   "total, resumed)")
    local_steps: int = Field(5, gt=0, le=100_000, description="private steps per site per round")
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"] = "fedavg"
    min_nodes: int = Field(2, gt=0, le=100_000, description="quorum: sites that must be online to "
                           "start a round")
    fraction_train: float = Field(1.0, gt=0.0, le=1.0, description="share of online sites sampled")
    sample_timeout: float = Field(120.0, gt=0.0, le=1e6, description="seconds to wait for the quorum")
    round_timeout: float = Field(900.0, gt=0.0, le=1e6, description="seconds to wait for sites' replies")
    noise_multiplier: float | None = Field(
        None, gt=0.0, le=1e6, description="sigma; None (in the run config 0.0, which cannot be "
        "None) = each site calibrates it to reach target-epsilon")
    target_epsilon: float = Field(8.0, gt=0.0, le=MAX_EPSILON, description="epsilon all planned "
                                  "rounds reach")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)
    patients_per_step: int = Field(16, gt=0, le=10_000_000)
    windows_per_patient: int = Field(4, ge=1, le=1024, description="windows k each sampled patient "
                                     "gives per private step; their mean gradient is clipped once")
    lr: float = Field(1e-3, gt=0.0, lt=10.0, description="sites' peak local learning rate")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="linear warm-up, in global steps (rounds x "
                              "local-steps) of the run's one schedule")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor of the run's "
                                "schedule, reached at num-server-rounds x local-steps")
    local_optimizer: Literal["adamw", "sgd"] = Field("adamw", description="the sites' optimizer")
    local_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd only)")
    optimizer_state: Literal["persist", "reset"] = Field(
        "persist", description="'persist': each site keeps its optimizer's state (AdamW moments) "
        "across rounds in its state/; 'reset': a fresh optimizer every round")
    initial_checkpoint: str = Field("", description="absolute checkpoint directory the global "
                                    "model starts from ('' = random initialisation)")
    proximal_mu: float = Field(0.01, ge=0.0, le=1e6, description="FedProx proximal term")
    server_lr: float = Field(0.01, gt=0.0, le=10.0, description="FedAdam server learning rate (eta)")
    trimmed_beta: float = Field(0.2, gt=0.0, lt=0.5, description="FedTrimmedAvg cut fraction")
    krum_malicious: int = Field(0, ge=0, le=100_000, description="Krum: sites assumed malicious")
    run_dir: str = Field("", description="absolute directory for checkpoints and reports")
    reference: str = Field("", description="reference FASTA for the server's held-out evaluation")
    holdout: str = Field("20:58025520-63025520", description="held-out CONTIG:START-END")
    eval_windows: int = Field(32, gt=0, le=100_000)
    site_eval_every: int = Field(0, ge=0, le=10_000, description="each site's private evaluation every "
                                 "N rounds (0 = never); each release is spent from its budget")
    site_eval_windows: int = Field(2, ge=1, le=256, description="held-out windows per patient in it")
    site_eval_panel: str = Field("", description="absolute path of a public list of variant "
                                 "positions (a PLINK .bim or a VCF): the sites' evaluations then score "
                                 "each patient's own bases at site-eval-positions of them in the "
                                 "held-out region ('' = the site-eval-windows evenly spaced windows)")
    site_eval_positions: int = Field(32, ge=1, le=MAX_EVAL_POSITIONS, description="panel positions "
                                     "each evaluation scores, on both haplotypes of every patient")
    site_eval_context: int = Field(128, ge=1, le=8192, description="bases before a panel position "
                                   "the model reads to predict it")
    site_eval_noise: float = Field(4.0, gt=0.0, le=1e6, description="its noise multiplier")
    site_eval_clip: float = Field(3.0, gt=0.0, le=64.0, description="bits per base each patient's "
                                  "contribution to it is clipped to")
    resume: bool = Field(False, description="continue from run_dir's last checkpoint")
    stop_after: int = Field(0, ge=0, le=10_000, description="stop cleanly after this round (0 = never); "
                            "a later run with resume = true continues")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_update_norm: float = Field(0.0, ge=0.0, le=1e12, description="bound on a site update's L2 norm; "
                                   "0 = automatic (2 x lr x local-steps x sqrt(parameters))")
    aggregation: Literal["plain", "secagg+"] = Field(
        "plain", description="'secagg+': Flower's SecAgg+, the server sees only the sum")
    secagg_shares: int = Field(3, ge=3, le=10_000, description="SecAgg+: shares of each site's secrets "
                               "(Flower needs at least 3)")
    secagg_threshold: int = Field(2, ge=2, le=10_000, description="SecAgg+: shares needed to reconstruct")
    secagg_clip_range: float = Field(1.0, gt=0.0, le=1e6, description="SecAgg+: weighted deltas are "
                                     "clipped to +-this before quantisation")
    max_examples: int = Field(1000, ge=50, le=100_000_000, description="largest example (patient) "
                              "count a site may claim; FedAvg weights by it, SecAgg+ scales by it")
    pki: str = Field("", description="absolute consortium PKI directory: each site may claim at most "
                     "the patients it declared there ('' = max-examples only)")

    @field_validator("noise_multiplier", mode="before")
    @classmethod
    def _zero_means_calibrate(cls, value: Any) -> Any:
        """The run config's spelling of "calibrate", 0 (a Flower run config holds no None), as None."""
        if not isinstance(value, bool) and isinstance(value, int | float) and value == 0:
            return None
        return value

    def to_run_config(self) -> dict[str, bool | float | int | str]:
        """This config as a Flower run config: kebab-case keys, and None (calibrate) as 0.0."""
        out = self.model_dump(by_alias=True)
        if out["noise-multiplier"] is None:
            out["noise-multiplier"] = 0.0
        return out

    @field_validator("preset")
    @classmethod
    def _preset_is_a_name(cls, name: str) -> str:
        check_preset_name(name)
        return name

    @model_validator(mode="after")
    def _schedule_fits(self) -> FederationConfig:
        total = self.num_server_rounds * self.local_steps
        if total > MAX_STEPS:
            raise ValueError(f"num-server-rounds x local-steps = {total} steps, above the limit of "
                             f"{MAX_STEPS}: lower num-server-rounds or local-steps")
        if self.warmup_steps > total:
            raise ValueError(f"warmup-steps={self.warmup_steps} is longer than the run's "
                             f"num-server-rounds x local-steps = {total} steps: lower warmup-steps")
        if self.pki and not Path(self.pki).is_absolute():
            raise ValueError(f"pki={self.pki!r}: give the absolute consortium PKI directory")
        if self.initial_checkpoint and not Path(self.initial_checkpoint).is_absolute():
            raise ValueError(f"initial-checkpoint={self.initial_checkpoint!r}: give an absolute "
                             "checkpoint directory")
        return self

    @model_validator(mode="after")
    def _secagg_compatible(self) -> FederationConfig:
        if self.aggregation != "secagg+":
            return self
        if self.strategy not in SECAGG_STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} needs each site's own update, which "
                             f"secure aggregation hides: use strategy {' or '.join(SECAGG_STRATEGIES)} "
                             "with aggregation 'secagg+', or aggregation 'plain'")
        if self.secagg_threshold >= self.secagg_shares:
            raise ValueError(f"secagg-threshold={self.secagg_threshold} is not below secagg-shares="
                             f"{self.secagg_shares}: Flower's SecAgg+ needs fewer shares to "
                             "reconstruct a secret than exist; lower secagg-threshold")
        if self.min_nodes < 2:
            raise ValueError("aggregation 'secagg+' needs min-nodes >= 2 (a sum of one site's "
                             "update is that update)")
        return self


class Region(_Frozen):
    """A 0-based, half-open interval on one contig."""

    contig: str = Field(min_length=1)
    start: int = Field(ge=0)
    end: int = Field(gt=0)

    @classmethod
    def parse(cls, text: str) -> Region:
        """``CONTIG:START-END`` (0-based, end exclusive; commas allowed) as a Region."""
        try:
            contig, span = text.rsplit(":", 1)
            start, end = (int(v.replace(",", "")) for v in span.split("-"))
        except ValueError:
            raise ConfigError(f"region {text!r}: expected CONTIG:START-END, e.g. "
                              "20:58025520-63025520 (0-based, end exclusive)") from None
        return validate(cls, {"contig": contig, "start": start, "end": end}, source="region")

    @model_validator(mode="after")
    def _ordered(self) -> Region:
        if self.end <= self.start:
            raise ValueError(f"region end={self.end} must be greater than start={self.start}")
        return self


class SitePrivacy(_Frozen):
    """A site's own privacy settings: set by the hospital, never by the server."""

    unit: Literal["patient"] = "patient"
    epsilon_budget: float = Field(8.0, gt=0.0, le=MAX_EPSILON, description="total epsilon this "
                                  "site will spend")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="must be below 1 / patients")


class SiteManifest(_Frozen):
    """``site.toml``: what a hospital holds. Relative paths are relative to the site directory."""

    name: str = Field(pattern=SITE_NAME_PATTERN, description=f"the site's name: {SITE_NAME_RULE}")
    role: Literal["hospital", "unseen"] = "hospital"
    kind: Literal["vcf", "fasta"] = "vcf"
    reference: Path | None = Field(None, strict=False, description="reference FASTA (kind = vcf)")
    vcf: Path | None = Field(None, strict=False, description="bgzipped, tabix-indexed multi-sample VCF")
    fasta: Path | None = Field(None, strict=False, description="FASTA whose records are the units "
                               "(kind = fasta)")
    contigs: tuple[str, ...] = Field(("20",), min_length=1, strict=False, description="contigs to "
                                     "train on ('chr20' and '20' name the same contig)")
    holdout: tuple[Region, ...] = Field((), strict=False, description="regions never used in "
                                        "training windows")
    phasing_seed: int = Field(0, description="seed of the per-patient draw phasing heterozygotes")
    privacy: SitePrivacy = SitePrivacy()

    @model_validator(mode="after")
    def _paths_for_kind(self) -> SiteManifest:
        if self.kind == "vcf" and (self.reference is None or self.vcf is None):
            raise ValueError("a site of kind 'vcf' needs both 'reference' and 'vcf'")
        if self.kind == "fasta" and self.fasta is None:
            raise ValueError("a site of kind 'fasta' needs 'fasta'")
        seen: dict[str, str] = {}
        for contig in self.contigs:
            if (twin := seen.get(contig_key(contig))) is not None:
                raise ValueError(f"contigs lists {twin!r} and {contig!r}, the same contig twice: "
                                 "list each contig once")
            seen[contig_key(contig)] = contig
        return self


def preset_names() -> list[str]:
    """Names of the presets shipped in ``configs/presets``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def check_preset_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a shipped preset's name (never a path)."""
    names = preset_names()
    if name in names:
        return
    if any(c in name for c in "/\\.:") or not name:
        raise ConfigError(f"preset {name!r} is not a preset name: a run names a shipped preset, "
                          f"never a file; valid presets: {', '.join(names)}")
    raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")


def preset_path(name: str) -> Path:
    """The file of the shipped preset ``name``, checked to be a registered name first."""
    check_preset_name(name)
    return PRESETS_DIR / f"{name}.toml"


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Load a shipped preset by name (never a path), then apply nested ``overrides``.

    This is the only loader for presets that come from a run config or the server.
    """
    return load_preset_file(preset_path(name), overrides)


def load_preset_file(path: Path, overrides: dict[str, Any] | None = None) -> Preset:
    """Load a preset from a TOML file the local user named, then apply nested ``overrides``."""
    data = _merge(read_toml(path), overrides or {})
    return validate(Preset, data, source=str(path))


def load_site_manifest(site_dir: Path) -> SiteManifest:
    """Read ``site_dir/site.toml`` and resolve its relative paths against ``site_dir``."""
    path = site_dir / "site.toml"
    if not path.exists():
        raise ConfigError(f"{site_dir}: no site.toml here; pass a site directory made by "
                          "'fedgenome data make-sites'")
    manifest = validate(SiteManifest, read_toml(path), source=str(path))
    resolved: dict[str, Any] = {
        key: (site_dir / value).resolve()
        for key in ("reference", "vcf", "fasta")
        if (value := getattr(manifest, key)) is not None
    }
    named = {contig_key(c): c for c in manifest.contigs}  # held-out regions as 'contigs' names them
    resolved["holdout"] = tuple(r.model_copy(update={"contig": named.get(contig_key(r.contig), r.contig)})
                                for r in manifest.holdout)
    return manifest.model_copy(update=resolved)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
