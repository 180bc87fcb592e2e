"""fedgenome: federated, differentially private genome language models.

One package, in layers; each imports only its own layer and the ones below (``tests/test_layers.py``):

* :mod:`fedgenome.configs`: validated configuration schemas, presets, the error hierarchy;
  :mod:`fedgenome.models`: the pretrained checkpoints that ship with the package.
* :mod:`fedgenome.shared`: genomes, tokenizer, model, training, the wire format; no privacy.
* :mod:`fedgenome.privacy`: DP-SGD training, the accountants and the signed privacy ledger; no flwr.
* :mod:`fedgenome.client` and :mod:`fedgenome.server`: the hospital's ClientApp and node, the
  consortium's ServerApp and deployment; neither imports the other.
* on top, everything else: :mod:`fedgenome.experiments` (whole federations and training runs on
  one machine: the local deployment, the in-process federation, the experiment runner behind the
  demo, the canary audit and the benchmarks) and the ``fedgenome`` CLI (``fedgenome.cli`` and its
  thin commands, which parse options, call ``fedgenome.experiments`` or a layer, and print).
"""

LAYERS: tuple[tuple[str, ...], ...] = (("configs", "models"), ("shared",), ("privacy",), ("client", "server"))
"""The sub-packages in layers, lowest first; every other module of fedgenome is on top of them."""
SUBPACKAGES: tuple[str, ...] = tuple(name for layer in LAYERS for name in layer)
TOP_PACKAGES: tuple[str, ...] = ("experiments",)
"""Sub-packages on top of the layers (beside the CLI modules), each a folder of the repository."""
MAPPED: tuple[str, ...] = SUBPACKAGES + TOP_PACKAGES
"""Every sub-package that lives in a folder of its own (``[tool.setuptools.package-dir]``)."""
