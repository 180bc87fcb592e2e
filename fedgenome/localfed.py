"""Moved to :mod:`fedgenome.experiments.localfed`; this name stays only for ``fedgenome/canaries.py``.

Remove it when the canary audit runs on :func:`fedgenome.experiments.runner.run_experiment`.
"""

from fedgenome.experiments.localfed import LocalFederation

__all__ = ["LocalFederation"]
