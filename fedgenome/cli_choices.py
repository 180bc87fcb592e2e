"""The CLI's choice lists, derived from the registries and schemas they choose from.

A preset added to ``configs/presets`` or a value added to a schema's ``Literal`` shows up in
``--help`` and is accepted on the command line without touching the commands. (The accountants'
list is in :mod:`fedgenome.cmd_privacy`, from the registry of :mod:`fedgenome.privacy.accounting`.)
A bad value ends as one line (``fedgenome.cli.main`` prints every bad parameter so) naming the
valid values the way the registries' own errors do: ``valid names: a, b, c``.
"""

from __future__ import annotations

from collections.abc import Iterable

import click

from fedgenome.configs.schema import DPConfig, FederationConfig, TrainConfig, preset_names
from fedgenome.configs.validation import field_choices


class NameChoice(click.Choice[str]):
    """One of a registry's names; ``--help`` lists them as ``[a|b|c]``."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__(list(names))

    def get_invalid_choice_message(self, value: object, ctx: click.Context | None) -> str:
        """``'x' is not one of them; valid names: a, b, c``."""
        return f"{value!r} is not one of them; valid names: {', '.join(map(str, self.choices))}"


PRESETS = NameChoice(preset_names())
"""The shipped presets (``configs/presets/*.toml``)."""
AGGREGATIONS = NameChoice(field_choices(FederationConfig, "aggregation"))
"""How the server sums the sites' updates (run config ``aggregation``)."""
DEVICES = NameChoice(field_choices(TrainConfig, "device"))
"""Where to train or evaluate (``train.device``)."""
GRAD_SAMPLE_MODES = NameChoice(field_choices(DPConfig, "grad_sample_mode"))
"""How Opacus computes per-sample gradients (``dp.grad_sample_mode``)."""
