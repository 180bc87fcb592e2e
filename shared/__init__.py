"""The plain-PyTorch core both sides share; no privacy and (but for ``flower_patches``) no flwr.

Genomes and data: ``genomes``, ``plink``, ``fetch``, ``sites``, ``corpus``, ``datasets``,
``tokenizer``. The model: ``model``, ``markov_prior``, ``checkpoint``. Training and evaluation:
``train``, ``schedule``, ``pretrain``, ``scoring``. The k-mer baselines: ``kmers``, ``markov``,
``smoothing``, ``reference_markov``, ``markov_fields``. The wire format every message uses:
``wire``; the run directory's layout: ``run_layout``. Plumbing: ``atomic``, ``processes``,
``preflight``, ``tls``, ``flower_patches``.
"""
