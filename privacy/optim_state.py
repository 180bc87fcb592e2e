"""A site's local optimizer state (AdamW moments) kept across the rounds of one run, in its ``state/``.

::

    state/optimizer/<run-key>-<optimizer>.pt    one file per run (and optimizer kind), atomic

What is saved is the *inner* optimizer's state (Opacus' ``DPOptimizer`` wraps the AdamW and shares
its state): the moments and step counts, with the names and shapes of the parameters they belong
to. The hyperparameters are not restored; they come from the run config every round (the learning
rate from the run's schedule).

Privacy: the moments are functions of the site's clipped and noised gradients only, so keeping them
is post-processing of mechanisms already counted in the site's ledger. They are saved only after
the round's ledger entry is on disk: a round whose entry failed leaves no trace in them. They never
leave the site (only the model delta is sent).

Behaviour across rounds:

* the global model changes between rounds: the site starts each round from the new global weights
  with its own moments ("local AdamW with persistent state"); the step count keeps growing, so
  Adam's bias correction continues instead of restarting at step 1;
* a site that skips rounds (not sampled, offline, refused) keeps the moments of the last round it
  trained and continues from them;
* a new process (SuperNode restart) reads the same file, so nothing is lost but an interrupted
  round's steps;
* a file whose parameter names or shapes differ from the model's cannot come from this run (a run
  keeps its model); it is refused with :class:`IncompatibleModelError` naming the file, rather than
  silently restarting the moments. A different optimizer kind has a file of its own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedgenome.configs.errors import ConfigError, IncompatibleModelError, InputFileError
from fedgenome.shared.atomic import atomic_path

log = logging.getLogger(__name__)
FORMAT = "fedgenome-optimizer-state/1"
RUN_KEY = re.compile(r"[0-9a-f]{32}")
"""A run key as the server sends it: 32 lowercase hex digits (it becomes part of a file name)."""


def _layout(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[tuple[str, list[int]]]]:
    """(name, shape) of every parameter, group by group, in the optimizer's order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[(names[id(p)], list(p.shape)) for p in group["params"]]
            for group in optimizer.param_groups]


@dataclass(frozen=True)
class OptimizerStore:
    """Where one run's local optimizer state lives at a site."""

    path: Path

    @classmethod
    def for_run(cls, state_dir: Path, *, run_key: str, optimizer: str) -> OptimizerStore:
        """The store of run ``run_key`` (from the server) for optimizer kind ``optimizer``.

        Raises:
            ConfigError: ``run_key`` is not 32 lowercase hex digits.
        """
        if not RUN_KEY.fullmatch(run_key):
            raise ConfigError(f"run key {run_key!r} from the server is not 32 lowercase hex digits; "
                              "the server must send the run's 'run-key'")
        return cls(state_dir / "optimizer" / f"{run_key}-{optimizer}.pt")

    def load_into(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> int | None:
        """Restore the saved state into ``optimizer`` (built over ``model``'s parameters).

        Returns:
            The round that saved it, or None when there is none yet (a fresh optimizer).

        Raises:
            InputFileError: The file is unreadable.
            IncompatibleModelError: It belongs to another model (names or shapes differ).
        """
        if not self.path.exists():
            log.info("no saved optimizer state at %s: starting fresh", self.path)
            return None
        saved = self._read()
        if saved["layout"] != _layout(optimizer, model):
            raise IncompatibleModelError(
                f"{self.path}: the saved optimizer state is for other parameters (names or shapes "
                "differ from this run's model); remove the file to start this site's optimizer "
                "fresh")
        current = optimizer.state_dict()
        optimizer.load_state_dict({"state": saved["state"], "param_groups": current["param_groups"]})
        return int(saved["round"])

    def save(self, optimizer: torch.optim.Optimizer, model: nn.Module, *, round: int) -> None:
        """Write ``optimizer``'s state atomically (after the round's ledger entry is on disk)."""
        state = optimizer.state_dict()["state"]
        payload = {"format": FORMAT, "round": round, "layout": _layout(optimizer, model),
                   "state": {i: {k: v.detach().cpu() if torch.is_tensor(v) else v
                                 for k, v in s.items()} for i, s in state.items()}}
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)

    def _read(self) -> dict[str, Any]:
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds on a damaged or foreign file
            raise InputFileError(f"{self.path}: unreadable optimizer state ({type(exc).__name__}); "
                                 "remove it to start this site's optimizer fresh") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise InputFileError(f"{self.path}: not a saved optimizer state ({FORMAT}); remove it "
                                 "to start this site's optimizer fresh")
        return saved
