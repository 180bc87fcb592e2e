"""Plain-PyTorch core of fedgenome: tokenizer, model, genomes, datasets, training, checkpoints.

Also what every layer above shares: the wire format (:mod:`~fedgenome.shared.wire`) and the run
directory's layout (:mod:`~fedgenome.shared.run_layout`). No privacy.
"""
