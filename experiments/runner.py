"""One federated experiment, start to finish: the sequence the demo, the canary audit and the benches share.

:func:`run_experiment` fetches the data (once, into the cache), builds the hospital sites, prepares
the run directory, starts a :class:`~fedgenome.experiments.localfed.LocalFederation` (its own PKI,
TLS and authenticated SuperNodes unless ``insecure``), submits the run, follows its rounds, stops
every process, publishes the PKI's public part and checks that the run completed. What differs
between experiments is data (an :class:`Experiment`) and two hooks: ``prepare_sites`` (e.g. plant
canaries at a site before the run starts; it may add run config keys) and the round callbacks.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgenome.configs.errors import ConfigError
from fedgenome.experiments.localfed import LocalFederation
from fedgenome.server.deploy import DeploymentError
from fedgenome.server.pki import PkiLayout
from fedgenome.server.progress import OnRound
from fedgenome.shared.fetch import DataPaths, fetch_data
from fedgenome.shared.run_layout import PkiRegistry, RunLayout
from fedgenome.shared.sites import make_sites

log = logging.getLogger(__name__)
HOSPITALS = ("hospital-gbr-fin", "hospital-tsi", "hospital-ceu")
"""The hospitals of ``make_sites`` that train (the other sites are not hospitals)."""
COMPLETED = "finished:completed"

PrepareSites = Callable[[Sequence[Path], DataPaths], Mapping[str, Any]]
"""Called with the built sites and the data before the federation starts; extra run config keys."""


@dataclass(frozen=True)
class Experiment:
    """What one federated experiment runs, and where it writes.

    Attributes:
        run_dir: The run's directory: the server's checkpoints and report, and (by default) the
            sites, the federation's state and logs, and the PKI's public part.
        cache: The data cache (``fetch_data``).
        run_config: The run config (kebab-case ``FederationConfig`` keys); the runner adds
            ``run-dir``, ``reference`` and ``min-nodes`` (all hospitals).
        marker: A file that marks ``run_dir`` as this kind of experiment's output: an existing
            ``run_dir`` with it is replaced, one without it (and not empty) is refused. None: the
            directory is used as it is (the benches' fresh temporary folders).
        hospitals: The sites that join the federation, by name.
        insecure: Plaintext, no PKI and no SuperNode authentication (tests that read the wire).
        timeout: Seconds to wait for the run.
        publish_pki: Copy the PKI's public part to ``run_dir/pki`` after the run.
        check_completed: Raise :class:`DeploymentError` unless the run completed.
        sites_dir: Where the sites are built (default ``run_dir/sites``).
        federation_dir: The federation's work directory (default ``run_dir/federation``).
    """

    run_dir: Path
    cache: Path
    run_config: Mapping[str, Any] = field(default_factory=dict)
    marker: str | None = None
    hospitals: tuple[str, ...] = HOSPITALS
    insecure: bool = False
    timeout: float = 3600.0
    publish_pki: bool = True
    check_completed: bool = True
    sites_dir: Path | None = None
    federation_dir: Path | None = None

    @property
    def sites_root(self) -> Path:
        """Where the sites are built."""
        return self.sites_dir or RunLayout(self.run_dir).sites

    @property
    def federation_root(self) -> Path:
        """The federation's work directory (certificates, Flower's state, logs)."""
        return self.federation_dir or RunLayout(self.run_dir).federation


@dataclass(frozen=True)
class ExperimentResult:
    """What a finished experiment left: its run, sites, status and timings."""

    run_id: int
    status: str
    """Flower's final status of the run, ``finished:completed`` when it completed."""
    sites: tuple[Path, ...]
    data: DataPaths
    run_config: dict[str, Any]
    pki: PkiLayout | None
    seconds: float
    """From the start of :func:`run_experiment` to the processes' stop."""
    startup_seconds: float
    """Starting the SuperLink and SuperNodes (before the run is submitted)."""
    run_seconds: float
    """From the submission to the run's end."""
    submitted_at: float
    """``time.monotonic()`` just before the submission (to time the rounds' callbacks against)."""

    @property
    def completed(self) -> bool:
        """The run finished and completed."""
        return self.status == COMPLETED


def prepare_run_dir(run_dir: Path, *, marker: str | None, made_by: str = "fedgenome") -> None:
    """An empty run directory marked ``marker``; an earlier output is replaced, anything else refused."""
    if marker is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / marker).exists():
            raise ConfigError(f"{run_dir} exists and is not an earlier {made_by}'s output; choose "
                              "another directory")
        log.info("replacing the earlier output of %s in %s", made_by, run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / marker).write_text(f"made by {made_by}\n")


def build_sites(spec: Experiment, paths: DataPaths) -> tuple[Path, ...]:
    """The experiment's hospital sites, built from the fetched data; absolute paths."""
    make_sites(paths, spec.sites_root)
    return tuple((spec.sites_root / name).resolve() for name in spec.hospitals)


def publish_pki(pki: PkiLayout, out: PkiRegistry) -> None:
    """Copy the public part of the PKI (certificates and the site key registry), no private key."""
    shutil.copytree(pki.sites, out.sites)
    for path in (pki.ca_cert, pki.tls.server_cert):
        shutil.copy2(path, out.root / path.name)


def run_experiment(spec: Experiment, *, made_by: str = "fedgenome",
                   prepare_sites: PrepareSites | None = None,
                   on_submit: Callable[[int], None] | None = None,
                   on_round: OnRound | None = None) -> ExperimentResult:
    """Run one federated experiment (see the module docstring); what it left.

    Args:
        spec: The experiment.
        made_by: Who made the run directory (its marker file's text, the refusal's message).
        prepare_sites: Called with the sites and data before the federation starts; the run
            config keys it returns are added (they override the spec's).
        on_submit: Called with the run id once the run is submitted.
        on_round: Called with each round's record as it ends.

    Raises:
        DeploymentError: The run did not complete (with ``spec.check_completed``).
    """
    start = time.monotonic()
    prepare_run_dir(spec.run_dir, marker=spec.marker, made_by=made_by)
    paths = fetch_data(spec.cache)
    sites = build_sites(spec, paths)
    extra = prepare_sites(sites, paths) if prepare_sites is not None else {}
    config = {**spec.run_config, "run-dir": str(spec.run_dir.resolve()),
              "reference": str(paths.reference.resolve()), "min-nodes": len(sites), **extra}
    launch = time.monotonic()
    with LocalFederation(spec.federation_root, list(sites), insecure=spec.insecure) as federation:
        begin = time.monotonic()
        run_id = federation.submit(config)
        if on_submit is not None:
            on_submit(run_id)
        status = federation.wait(run_id, timeout=spec.timeout, on_round=on_round)
        end = time.monotonic()
    if federation.pki is not None and spec.publish_pki:
        publish_pki(federation.pki, RunLayout(spec.run_dir).pki)
    if spec.check_completed and status != COMPLETED:
        raise DeploymentError(f"the federated run ended as {status}; logs: "
                              f"{spec.federation_root / 'logs'}")
    return ExperimentResult(run_id=run_id, status=status, sites=sites, data=paths, run_config=config,
                            pki=federation.pki, seconds=time.monotonic() - start,
                            startup_seconds=begin - launch, run_seconds=end - begin,
                            submitted_at=begin)
