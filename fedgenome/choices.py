"""The CLI's choice lists, derived from the registries and schemas they choose from.

A preset added to ``configs/presets`` or a value added to a schema's ``Literal`` shows up in
``--help`` and is accepted on the command line without touching the commands. (The accountants'
list lives in :mod:`fedgenome.cmd_privacy`, from the registry of :mod:`fedgenome.privacy.accounting`.)
"""

from __future__ import annotations

from fedgenome.cli_choice import NameChoice
from fedgenome.configs.schema import DPConfig, FederationConfig, TrainConfig, preset_names
from fedgenome.configs.validation import field_choices

PRESETS = NameChoice(preset_names())
"""The shipped presets (``configs/presets/*.toml``)."""
AGGREGATIONS = NameChoice(field_choices(FederationConfig, "aggregation"))
"""How the server sums the sites' updates (run config ``aggregation``)."""
DEVICES = NameChoice(field_choices(TrainConfig, "device"))
"""Where to train or evaluate (``train.device``)."""
GRAD_SAMPLE_MODES = NameChoice(field_choices(DPConfig, "grad_sample_mode"))
"""How Opacus computes per-sample gradients (``dp.grad_sample_mode``)."""
