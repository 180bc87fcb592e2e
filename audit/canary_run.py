"""``fedgenome audit canaries``' experiment: canaries planted in a real federated run, and its audit.

The sequence is :func:`fedgenome.experiments.runner.run_experiment`'s (data, the hospital sites,
the local federation with its PKI, TLS and authenticated SuperNodes, the rounds). Its
``prepare_sites`` hook does the auditor's part once the sites are built and before training: it
seals the draw (default ``<run>/auditor/canary-draw.json``; sealed there, not earlier, because
preparing the run directory replaces it), plants the included canaries at one hospital and writes
the draw's commitment to ``<run>/canary-commitment.json``. After the run the global model is
audited on the draw (:func:`fedgenome.audit.canaries.audit_model`) and the result written to
``<run>/canary-audit.json``, beside the site's theoretical epsilon from its signed ledger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from fedgenome.audit import canaries
from fedgenome.audit.canaries import SEALED_NAME, CanaryAudit, CanaryDraw
from fedgenome.audit.empirical import BETA
from fedgenome.configs.errors import ConfigError
from fedgenome.configs.schema import FederationConfig, load_preset
from fedgenome.configs.validation import validate
from fedgenome.experiments.runner import HOSPITALS, Experiment, PrepareSites, run_experiment
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.clock import utc_now_text
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.run_layout import RunLayout

log = logging.getLogger(__name__)
MARKER = ".fedgenome-canary-audit"
MADE_BY = "canary audit"
"""Who made the run directory: an existing one not made by it is refused."""


def canary_run_config(*, preset: str, rounds: int, local_steps: int,
                      target_epsilon: float) -> dict[str, Any]:
    """The canary run's run config (kebab-case ``FederationConfig`` keys), validated."""
    config: dict[str, Any] = {"preset": preset, "num-server-rounds": rounds, "local-steps": local_steps,
                              "target-epsilon": target_epsilon}
    validate(FederationConfig, config, source="audit canaries options")
    return config


def check_options(*, site: str, m: int, repeats: int, references: int, beta: float) -> None:
    """Refuse bad audit options before anything is written (one line, with the options' names)."""
    if not 0.0 < beta < 1.0 or references < 1 or m < 2 or repeats < 1:
        raise ConfigError(f"--beta {beta} must be in (0, 1), --references {references} >= 1, "
                          f"--canaries {m} >= 2 and --repeats {repeats} >= 1")
    if site not in HOSPITALS:
        raise ConfigError(f"--site-name {site}: plant canaries at one of {', '.join(HOSPITALS)}")


def write_commitment(files: RunLayout, draw: CanaryDraw, *, site: str) -> None:
    """Publish the draw's commitment in the run directory (no canary, no inclusion bit)."""
    files.canary_commitment.write_text(json.dumps(
        {"commitment": draw.commitment, "m": len(draw.tokens), "repeats": draw.repeats, "site": site,
         "committed_at": utc_now_text()}, indent=2) + "\n")


def write_report(files: RunLayout, report: CanaryAudit) -> Path:
    """Write the audit where the run's readers look for it (``canary-audit.json``); its path."""
    files.canary_audit.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return files.canary_audit


def planting(files: RunLayout, draw: CanaryDraw, *, site: str, sealed: Path) -> PrepareSites:
    """The runner's ``prepare_sites`` hook: seal the draw, plant it at ``site``, commit to it.

    The planted units count as patients in the site's (bucketed) example count, so the hook
    widens the server's plausibility bound on it (``max-examples``) by as many.
    """
    def plant_here(sites: Sequence[Path], paths: DataPaths) -> dict[str, Any]:
        canaries.seal(draw, sealed)
        units = canaries.plant(files.sites / site, draw)
        write_commitment(files, draw, site=site)
        log.info("sealed %d canaries in %s; planted %d units at %s; commitment %s", len(draw.tokens),
                 sealed, units, site, draw.commitment[:16])
        return {"max-examples": 1000 + 50 * -(-units // 50)}
    return plant_here


def run_canary_audit(out: Path, *, cache: Path, site: str, m: int, repeats: int,
                     run_config: dict[str, Any], auditor_dir: Path | None = None,
                     references: int = 2000, beta: float = BETA, seed: int | None = None,
                     timeout: float = 3600.0) -> CanaryAudit:
    """Draw, seal and plant canaries, run the federation, audit its model; the report (module doc).

    Args:
        out: The run directory (an earlier canary audit's is replaced, anything else refused).
        cache: The data cache.
        site: The hospital the canaries are planted at.
        m: Canaries drawn (each included with probability 1/2).
        repeats: Units (patients) per included canary.
        run_config: The run config (:func:`canary_run_config`).
        auditor_dir: Where the draw is sealed (default ``out/auditor``).
        references: Never-planted reference sequences for exposure.
        beta: Significance of the lower bound.
        seed: Seed of the draw (default: random; sealed).
        timeout: Seconds to wait for the run.

    Raises:
        ConfigError: Bad options, or ``out`` or the sealed draw's place is taken.
        DeploymentError: The federated run did not complete.
    """
    check_options(site=site, m=m, repeats=repeats, references=references, beta=beta)
    preset = load_preset(run_config["preset"])
    files = RunLayout(out)
    sealed = (auditor_dir or files.auditor) / SEALED_NAME
    draw = canaries.draw_canaries(m=m, span=preset.data.window + 1, repeats=repeats, seed=seed)
    spec = Experiment(run_dir=out, cache=cache, run_config=run_config, marker=MARKER,
                      publish_pki=False, timeout=timeout)
    with Console(stderr=True).status("federated training (see the log for rounds)..."):
        run_experiment(spec, made_by=MADE_BY,
                       prepare_sites=planting(files, draw, site=site, sealed=sealed))
    state = json.loads(files.state.read_text())
    model = load_checkpoint(Path(state["checkpoint"])).model
    theoretical, delta = canaries.site_epsilon(files.sites / site)
    draw = canaries.open_sealed(sealed, commitment=draw.commitment)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("scoring canaries and references", total=m + references)
        report = canaries.audit_model(model, draw, delta=delta, theoretical_epsilon=theoretical,
                             references=references, beta=beta,
                             on_batch=lambda n: progress.advance(task, n))
    write_report(files, report)
    return report
