"""The lowest layer: validated configuration schemas, the shipped presets and the error hierarchy.

``schema`` (frozen pydantic models, built once at the edge), ``validation`` (one-line errors from
untrusted input), ``presets/*.toml``, ``errors`` (every
user-facing failure), ``contigs`` (contig-name rules). Imports nothing else of fedgenome.
"""

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
