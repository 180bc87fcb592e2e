"""Moved to :mod:`fedgenome.experiments.demo`; this name stays only for ``fedgenome/canaries.py``.

Remove it when the canary audit runs on :func:`fedgenome.experiments.runner.run_experiment`.
"""

from fedgenome.experiments.runner import HOSPITALS

__all__ = ["HOSPITALS"]
