"""``fedgenome audit canaries``: an empirical privacy audit of a real federated run, in one run.

The auditor draws m random A/C/G/T canaries of one training window each and includes each one
independently with probability 1/2. The whole draw (canaries, inclusion bits, seed, salt) is sealed
in a file only the auditor reads (``<auditor>/canary-draw.json``, mode 0600); the run directory and
the site get only its salted SHA-256 commitment, before training, so the auditor can show later
that the draw was fixed in advance. The included canaries are planted at one hospital as extra
patients (``state/canaries.npz``, ``repeats`` units each); that site never learns which canaries
were left out. After the federated run the global model scores every canary and |R| never-planted
reference sequences by loss; :mod:`fedgenome.audit.empirical` turns the membership guesses into a lower
bound on epsilon at the site's delta (Steinke, Nasr & Jagielski) and the ranks into exposures
(Carlini et al.). ``canary-audit.json`` puts the bound beside the site's theoretical epsilon from
its signed ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import torch
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from fedgenome.audit.empirical import BETA, exposures, one_run_audit
from fedgenome.choices import PRESETS
from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.configs.schema import FederationConfig, load_preset, load_site_manifest
from fedgenome.configs.validation import validate
from fedgenome.privacy.ledger.verify import verify_ledger
from fedgenome.privacy.site_state import ledger_path, site_public_key
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.datasets import write_planted
from fedgenome.shared.fetch import CACHE_HELP
from fedgenome.shared.tokenizer import A, T, decode, encode
from fedgenome.shared.train import IGNORE, autocast, split_batch

log = logging.getLogger(__name__)
FORMAT = "fedgenome-canaries/1"
MARKER = ".fedgenome-canary-audit"
SEALED_NAME = "canary-draw.json"
REPORT_NAME = "canary-audit.json"
COMMITMENT_NAME = "canary-commitment.json"


@dataclass(frozen=True)
class CanaryDraw:
    """The auditor's secret: every canary, which were included, and what makes it reproducible."""

    tokens: npt.NDArray[np.uint8]  # (m, window + 1), A/C/G/T ids
    included: npt.NDArray[np.bool_]  # (m,)
    repeats: int
    seed: int
    salt: str  # hex; keeps the commitment from being checked against guessed draws

    @property
    def commitment(self) -> str:
        """SHA-256 over the salt and the canonical draw: published before training."""
        body = {"format": FORMAT, "seed": self.seed, "repeats": self.repeats,
                "included": "".join("1" if s else "0" for s in self.included),
                "canaries": [decode(row) for row in self.tokens]}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(bytes.fromhex(self.salt) + text.encode()).hexdigest()


def draw_canaries(*, m: int, span: int, repeats: int = 1, seed: int | None = None) -> CanaryDraw:
    """Draw m uniform A/C/G/T sequences of ``span`` tokens, each included with probability 1/2."""
    if m < 2 or repeats < 1:
        raise ConfigError(f"--canaries {m} / --repeats {repeats}: need at least 2 canaries and 1 repeat")
    seed = secrets.randbits(63) if seed is None else seed
    rng = np.random.default_rng([seed, 0])
    tokens = rng.integers(A, T + 1, size=(m, span), dtype=np.uint8)
    included = rng.random(m) < 0.5
    return CanaryDraw(tokens, included, repeats, seed, secrets.token_hex(32))


def reference_sequences(*, count: int, span: int, seed: int) -> npt.NDArray[np.uint8]:
    """``count`` sequences drawn like the canaries from another stream; never planted anywhere."""
    return np.random.default_rng([seed, 1]).integers(A, T + 1, size=(count, span), dtype=np.uint8)


def seal(draw: CanaryDraw, path: Path) -> None:
    """Write the draw to ``path`` (mode 0600, in a 0700 directory); refuses to overwrite."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = {"format": FORMAT, "seed": draw.seed, "repeats": draw.repeats, "salt": draw.salt,
            "commitment": draw.commitment, "included": [bool(s) for s in draw.included],
            "canaries": [decode(row) for row in draw.tokens]}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: a sealed canary draw is already there; choose another "
                          "--auditor-dir") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh)
        fh.flush()
        os.fsync(fh.fileno())


def open_sealed(path: Path, *, commitment: str | None = None) -> CanaryDraw:
    """Read a sealed draw and check it against its commitment (and ``commitment``, when given)."""
    try:
        body = json.loads(path.read_text())
        draw = CanaryDraw(np.stack([encode(s) for s in body["canaries"]]),
                          np.array(body["included"], dtype=bool), int(body["repeats"]),
                          int(body["seed"]), str(body["salt"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"{path}: not a readable sealed canary draw ({exc})") from None
    for expected in {body.get("commitment"), commitment} - {None}:
        if draw.commitment != expected:
            raise InputFileError(f"{path}: the draw does not match its commitment {expected}; it "
                                 "was changed after training began")
    return draw


@torch.no_grad()
def sequence_losses(model: nn.Module, tokens: npt.NDArray[np.uint8], *, device: torch.device,
                    batch_size: int = 64,
                    on_batch: Callable[[int], None] | None = None) -> npt.NDArray[np.float64]:
    """Mean next-base loss (nats per base) of ``model`` on each sequence (n, window + 1)."""
    model.eval()
    out = []
    for chunk in torch.split(torch.from_numpy(tokens.astype(np.int64)), batch_size):
        x, y = split_batch(chunk.to(device))
        with autocast(device):
            logits = model(x)  # (B, W, V)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y,
                                                ignore_index=IGNORE, reduction="none")  # (B, W)
        out.append((nll.sum(1) / (y != IGNORE).sum(1).clamp(min=1)).double().cpu().numpy())
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(out)


@dataclass(frozen=True)
class CanaryResult:
    """One canary in the report (no sequence: those stay in the sealed draw)."""

    id: int
    included: bool
    loss: float
    exposure: float


@dataclass(frozen=True)
class CanaryAudit:
    """What ``canary-audit.json`` holds."""

    m: int
    repeats: int
    included: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    beta: float
    delta: float
    empirical_epsilon: float
    theoretical_epsilon: float | None
    references: int
    reference_loss_median: float
    exposure_included_mean: float
    exposure_excluded_mean: float
    commitment: str
    canaries: tuple[CanaryResult, ...]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return asdict(self)


def audit_model(model: nn.Module, draw: CanaryDraw, *, delta: float, theoretical_epsilon: float | None,
                references: int = 2000, beta: float = BETA, device: torch.device | None = None,
                on_batch: Callable[[int], None] | None = None) -> CanaryAudit:
    """Score every canary and ``references`` fresh sequences with ``model`` and audit the guesses."""
    device = device or torch.device("cpu")
    model.to(device)
    losses = sequence_losses(model, draw.tokens, device=device, on_batch=on_batch)
    refs = sequence_losses(model, reference_sequences(count=references, span=draw.tokens.shape[1],
                                                       seed=draw.seed), device=device, on_batch=on_batch)
    included = [bool(s) for s in draw.included]
    audit = one_run_audit(scores=[-v for v in losses], included=included, delta=delta, beta=beta)
    exp = [e.exposure for e in exposures(losses.tolist(), refs.tolist())]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return CanaryAudit(
        m=len(losses), repeats=draw.repeats, included=audit.included, guesses=audit.guesses,
        correct=audit.correct, k_plus=audit.k_plus, k_minus=audit.k_minus, beta=beta, delta=delta,
        empirical_epsilon=audit.epsilon, theoretical_epsilon=theoretical_epsilon,
        references=references, reference_loss_median=float(np.median(refs)),
        exposure_included_mean=mean([e for e, s in zip(exp, included, strict=True) if s]),
        exposure_excluded_mean=mean([e for e, s in zip(exp, included, strict=True) if not s]),
        commitment=draw.commitment,
        canaries=tuple(CanaryResult(i, s, float(v), e)
                       for i, (s, v, e) in enumerate(zip(included, losses, exp, strict=True))))


def plant(site_dir: Path, draw: CanaryDraw) -> int:
    """Plant the included canaries at the site (``repeats`` units each); the units planted."""
    chosen = draw.tokens[draw.included]
    write_planted(site_dir, chosen, repeats=draw.repeats, commitment=draw.commitment)
    return len(chosen) * draw.repeats


def site_epsilon(site_dir: Path) -> tuple[float, float]:
    """The site's cumulative epsilon from its verified, signed ledger, and its delta."""
    manifest = load_site_manifest(site_dir)
    entries = verify_ledger(ledger_path(site_dir / "state"),
                            public_key=site_public_key(site_dir, manifest.name), site=manifest.name)
    return (entries[-1].epsilon if entries else 0.0), manifest.privacy.delta


def prepare_out(out: Path) -> None:
    """An empty output directory; an earlier audit's output there is replaced, anything else refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"{out} exists and is not an earlier canary audit; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by fedgenome audit canaries\n")


def run_canary_audit(out: Path, *, auditor_dir: Path, cache: Path, site: str, m: int, repeats: int,
                     run_config: dict[str, Any], references: int, beta: float, seed: int | None,
                     timeout: float) -> CanaryAudit:
    """Sites, sealed draw, planting, the real federation, scoring and the report (see module doc)."""
    from fedgenome.demo import HOSPITALS
    from fedgenome.localfed import LocalFederation
    from fedgenome.server.deploy import DeploymentError
    from fedgenome.shared.checkpoint import load_checkpoint
    from fedgenome.shared.fetch import fetch_data
    from fedgenome.shared.sites import make_sites

    if site not in HOSPITALS:
        raise ConfigError(f"--site {site}: plant canaries at one of {', '.join(HOSPITALS)}")
    preset = load_preset(run_config["preset"])
    prepare_out(out)
    paths = fetch_data(cache)
    make_sites(paths, out / "sites")
    sites = [(out / "sites" / name).resolve() for name in HOSPITALS]
    draw = draw_canaries(m=m, span=preset.data.window + 1, repeats=repeats, seed=seed)
    seal(draw, auditor_dir / SEALED_NAME)
    units = plant(out / "sites" / site, draw)
    (out / COMMITMENT_NAME).write_text(json.dumps(
        {"commitment": draw.commitment, "m": m, "repeats": repeats, "site": site,
         "committed_at": utc_now_text()}, indent=2) + "\n")
    log.info("sealed %d canaries in %s; planted %d units at %s; commitment %s", m,
             auditor_dir / SEALED_NAME, units, site, draw.commitment[:16])
    # The planted units count as patients in the site's (bucketed) example count: widen the
    # server's plausibility bound on it by as many.
    config = {**run_config, "run-dir": str(out.resolve()), "reference": str(paths.reference.resolve()),
              "min-nodes": len(sites), "max-examples": 1000 + 50 * -(-units // 50)}
    with LocalFederation(out / "federation", sites) as federation, \
            Console(stderr=True).status("federated training (see the log for rounds)..."):
        status = federation.wait(federation.submit(config), timeout=timeout)
    if status != "finished:completed":
        raise DeploymentError(f"the federated run ended as {status}; logs: {out / 'federation' / 'logs'}")
    state = json.loads((out / "state.json").read_text())
    model = load_checkpoint(Path(state["checkpoint"])).model
    theoretical, delta = site_epsilon(out / "sites" / site)
    sealed = open_sealed(auditor_dir / SEALED_NAME, commitment=draw.commitment)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("scoring canaries and references", total=m + references)
        report = audit_model(model, sealed, delta=delta, theoretical_epsilon=theoretical,
                             references=references, beta=beta,
                             on_batch=lambda n: progress.advance(task, n))
    (out / REPORT_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def print_report(report: CanaryAudit, path: Path) -> None:
    """The short table printed at the end (no sequences; ids and bits only, for the auditor)."""
    console = Console()
    table = Table(title="Canary audit (Steinke-Nasr-Jagielski one-run bound; Carlini exposure)")
    table.add_column("what")
    table.add_column("value", justify="right")
    theory = "-" if report.theoretical_epsilon is None else f"{report.theoretical_epsilon:.3f}"
    for what, value in (
            ("canaries m (included)", f"{report.m} ({report.included})"),
            ("units per canary", str(report.repeats)),
            ("guesses k+ / k- (correct / made)",
             f"{report.k_plus} / {report.k_minus} ({report.correct} / {report.guesses})"),
            (f"empirical epsilon lower bound (beta {report.beta:g}, delta {report.delta:g})",
             f"{report.empirical_epsilon:.3f}"),
            ("theoretical epsilon (site ledger)", theory),
            (f"mean exposure in / out (max {np.log2(report.references + 1):.1f} bits)",
             f"{report.exposure_included_mean:.2f} / {report.exposure_excluded_mean:.2f}")):
        table.add_row(what, value)
    console.print(table)
    if report.repeats > 1:
        console.print(f"note: each canary is {report.repeats} patients, so its guarantee is group "
                      "privacy, weaker than the per-patient theoretical epsilon shown")
    console.print(f"commitment {report.commitment}; report {path}")


def canaries_command(
    out: Annotated[Path, typer.Option(help="Run directory: sites, federation, report.")],
    canaries: Annotated[int, typer.Option("--canaries", help="Canaries m (each included with "
                                          "probability 1/2).")] = 200,
    repeats: Annotated[int, typer.Option(help="Patients (units) per included canary.")] = 1,
    preset: Annotated[str, typer.Option(help="Model preset.", click_type=PRESETS)] = "tiny",
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    local_steps: Annotated[int, typer.Option(help="Private steps per site per round.")] = 5,
    site: Annotated[str, typer.Option(help="The hospital the canaries are planted at.")] = "hospital-ceu",
    target_epsilon: Annotated[float, typer.Option(help="Epsilon every site reaches after all "
                                                  "rounds.")] = 8.0,
    references: Annotated[int, typer.Option(help="Never-planted reference sequences for "
                                            "exposure.")] = 2000,
    beta: Annotated[float, typer.Option(help="Significance of the lower bound.")] = BETA,
    seed: Annotated[int | None, typer.Option(help="Seed of the draw (default: random; sealed).")
                    ] = None,
    auditor_dir: Annotated[Path | None, typer.Option(help="Where the sealed draw goes (default "
                                                     "OUT/auditor).")] = None,
    cache: Annotated[Path | None, typer.Option(help=f"Data cache (default: {CACHE_HELP}).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 3600.0,
) -> None:
    """Plant canaries at one hospital, run the federation, and bound epsilon from below."""
    from fedgenome.cmd_fed import _terminate_on_sigterm
    from fedgenome.shared.fetch import default_cache

    _terminate_on_sigterm()
    if not 0.0 < beta < 1.0 or references < 1 or canaries < 2 or repeats < 1:
        raise ConfigError(f"--beta {beta} must be in (0, 1), --references {references} >= 1, "
                          f"--canaries {canaries} >= 2 and --repeats {repeats} >= 1")
    config = {"preset": preset, "num-server-rounds": rounds, "local-steps": local_steps,
              "target-epsilon": target_epsilon}
    validate(FederationConfig, config, source="audit canaries options")
    report = run_canary_audit(out, auditor_dir=auditor_dir or out / "auditor",
                              cache=cache or default_cache(), site=site, m=canaries, repeats=repeats,
                              run_config=config, references=references, beta=beta, seed=seed,
                              timeout=timeout)
    print_report(report, out / REPORT_NAME)
