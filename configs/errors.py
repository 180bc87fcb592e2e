"""The project's error hierarchy: every user-facing failure is one of these, with a one-line message."""

from __future__ import annotations


class FedGenomeError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero, without a traceback."""

    exit_code = 2


class ConfigError(FedGenomeError, ValueError):
    """A configuration key or value is invalid; the message names the key, the value and the fix."""


class InputFileError(FedGenomeError):
    """An input file is missing, unreadable or malformed; the message names the file and the fix."""


class DataFetchError(FedGenomeError):
    """The real data could not be fetched; the message says what to install or where to put files."""


class IncompatibleModelError(FedGenomeError):
    """Weights or a checkpoint do not fit the model they are loaded into."""


class PrivacyBudgetExhausted(FedGenomeError):
    """Training would take a site past its privacy budget, so nothing was trained or sent."""

    exit_code = 3


class LedgerError(FedGenomeError):
    """A privacy ledger fails verification: a bad signature, a broken hash chain, a missing entry."""


class MissingExtraError(FedGenomeError):
    """An optional dependency is not installed; the message names the command, the package and the fix."""


class DeploymentError(FedGenomeError):
    """A Flower process or command failed; the message says which and where its log is."""


class UntrustedBundleError(FedGenomeError):
    """A run's app bundle is not one the node trusts, so none of its code was installed or run."""

    exit_code = 4
