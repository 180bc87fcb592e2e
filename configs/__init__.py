"""Validated configuration schemas and the shipped presets."""

from fedgenome.configs.schema import (
    DataConfig,
    DPConfig,
    FederationConfig,
    ModelConfig,
    Preset,
    Region,
    SiteManifest,
    SitePrivacy,
    TrainConfig,
    load_preset,
    load_preset_file,
    load_site_manifest,
    preset_names,
)

__all__ = [
    "DPConfig",
    "DataConfig",
    "FederationConfig",
    "ModelConfig",
    "Preset",
    "Region",
    "SiteManifest",
    "SitePrivacy",
    "TrainConfig",
    "load_preset",
    "load_preset_file",
    "load_site_manifest",
    "preset_names",
]
