"""Which app bundles a hospital's node runs: the one its installed fedgenome builds, and those it pins.

Flower hands a SuperNode whatever bundle (FAB) the submitter of a run sent, and the ClientApp is
loaded from it. The site's budget check, its ledger and its egress guard are code, so a node that ran
any bundle would give a hospital the operator's guarantees, not its own. The worker therefore checks
every run's bundle before installing it (client/app_loader.py): its content digest
(:mod:`fedgenome.shared.app_bundle`) must be the installed fedgenome's, which the node computes
itself at start, or one the hospital pinned with ``fedgenome client start --trust DIGEST`` after
reviewing that bundle. Anything else is refused: nothing of it is unpacked or imported, the task
fails with the reason (the operator sees it in the ServerApp's log and the round's ``failed``), and
the node goes on serving other runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version

from fedgenome.configs.errors import UntrustedBundleError
from fedgenome.shared.app_bundle import bundle_digest, installed_digest, parse_digest


@dataclass(frozen=True)
class TrustedBundles:
    """The content digests of the bundles a node runs."""

    installed: str
    """The bundle of the fedgenome installed on the node."""
    pinned: frozenset[str] = frozenset()
    """Further bundles the hospital reviewed and pinned (``--trust``)."""

    @classmethod
    def of_installed(cls, pinned: Iterable[str] = ()) -> TrustedBundles:
        """The installed fedgenome's bundle and ``pinned`` (digests as ``client trust`` prints them)."""
        return cls(installed_digest(), frozenset(parse_digest(d) for d in pinned))

    def describe(self) -> str:
        """One line: what the node trusts."""
        extra = "".join(f", {d} (pinned)" for d in sorted(self.pinned - {self.installed}))
        return f"{self.installed} (the installed fedgenome {version('fedgenome')}){extra}"

    def check(self, content: bytes, *, run_id: int) -> str:
        """The bundle's digest when it is trusted.

        Raises:
            UntrustedBundleError: It is not; the message says what was refused and what to do.
        """
        digest = bundle_digest(content)
        if digest != self.installed and digest not in self.pinned:
            raise UntrustedBundleError(
                f"refused the app bundle of run {run_id}: its content {digest} is not a bundle this node "
                f"trusts ({self.describe()}); none of it was installed or run. The submitter must run the "
                f"fedgenome release the sites installed, or the hospital may review that bundle and start "
                f"its node with --trust {digest}")
        return digest
