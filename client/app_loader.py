"""The ClientApp of the current run's app bundle, for a worker that outlives runs (client/worker.py).

Only a bundle the node trusts (client/trust.py) is installed at all; any other is refused first.
The app bundle (FAB) of a run is installed once into ``$FLWR_HOME/apps/`` (its file hashes checked,
as ``flwr-clientapp`` does) and its ClientApp loaded as Flower loads it: the bundle's directory
first on ``sys.path``, then the component named in its ``pyproject.toml``. fedgenome's own bundle
holds that file only, so the ClientApp is the installed ``fedgenome.client.app``. When a task
comes from another run or another bundle, every module of the app's packages (the bundle's
top-level names and the component's package, ``fedgenome``) is dropped from ``sys.modules`` and
imported afresh, except the modules the worker itself had loaded when it started: no module state
(caches, counters) of one run reaches the next.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from flwr.cli.config_utils import load_and_validate
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.config import get_project_dir
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run

from fedgenome.client.trust import TrustedBundles
from fedgenome.configs.errors import UntrustedBundleError

log = logging.getLogger(__name__)


def top_level_names(app_dir: Path) -> set[str]:
    """The importable top-level packages and modules of a bundle directory."""
    packages = {p.name for p in app_dir.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return packages | {p.stem for p in app_dir.glob("*.py")}


def app_package(app_dir: Path) -> str:
    """The top-level package of the bundle's ClientApp component (``fedgenome`` for ours)."""
    config = load_and_validate(app_dir / "pyproject.toml", check_module=False)[0] or {}
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    ref = str(components.get("clientapp", ""))
    return ref.partition(":")[0].partition(".")[0]


def _under(path: str, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def purge_modules(names: set[str], *, roots: tuple[Path, ...] = (),
                  keep: frozenset[str] = frozenset()) -> list[str]:
    """Drop modules named in ``names`` (and their submodules) or loaded from under ``roots``.

    Returns the names dropped. ``__main__`` and the modules in ``keep`` are never dropped.
    """
    dropped = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name != "__main__" and name not in keep and (name.partition(".")[0] in names
                                   or (file is not None and any(_under(file, r) for r in roots))):
            del sys.modules[name]
            dropped.append(name)
    importlib.invalidate_caches()
    return dropped


def forget_directory(app_dir: Path) -> None:
    """Drop the modules loaded from ``app_dir`` and take it off ``sys.path``."""
    purge_modules(set(), roots=(app_dir,))
    while str(app_dir) in sys.path:
        sys.path.remove(str(app_dir))


class AppLoader:
    """Loads the ClientApp of a task's run, keeping it for the following tasks of the same run."""

    def __init__(self, *, trusted: TrustedBundles, keep: frozenset[str] = frozenset()) -> None:
        """``trusted``: the bundles this node runs; ``keep``: modules never dropped (the worker's own)."""
        self.trusted = trusted
        self._keep = keep
        self._key: tuple[int, str] | None = None
        self._app: ClientApp | None = None
        self._dir: Path | None = None

    def app(self, run: Run, fab: Fab) -> ClientApp:
        """The ClientApp of ``run``'s bundle; a new run or bundle reloads every bundle module.

        Raises:
            LoadClientAppError: The bundle is not trusted (client/trust.py), or could not be
                installed, or its ClientApp not imported.
        """
        key = (run.run_id, fab.hash_str)
        if key == self._key and self._app is not None:
            return self._app
        try:
            digest = self.trusted.check(fab.content, run_id=run.run_id)
        except UntrustedBundleError as exc:
            log.error("%s", exc)
            raise LoadClientAppError(str(exc)) from None
        if self._dir is not None:
            forget_directory(self._dir)
        self._key = self._app = self._dir = None
        try:
            install_from_fab(fab.content, skip_prompt=True)  # checks the bundle's file hashes
            app_dir = get_project_dir(run.fab_id, run.fab_version, fab.hash_str)
        except Exception as exc:
            raise LoadClientAppError(f"could not install the app bundle of run {run.run_id}: "
                                     f"{exc}") from exc
        dropped = purge_modules(top_level_names(app_dir) | {app_package(app_dir)}, keep=self._keep)
        log.info("run %d: loading the ClientApp of the trusted bundle %s from %s (%d modules dropped)",
                 run.run_id, digest, app_dir, len(dropped))
        app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
            run.fab_id, run.fab_version, fab.hash_str)
        self._key, self._app, self._dir = key, app, app_dir
        return app
