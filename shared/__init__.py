"""The plain-PyTorch core both sides share; no privacy, and flwr only where a contract is Flower's.

Genomes and data: ``genomes``, ``plink``, ``fetch``, ``sites``, ``corpus``, ``datasets``,
``tokenizer``. The model: ``model``, ``markov_prior``, ``checkpoint``. Training and evaluation:
``train``, ``schedule``, ``pretrain``, ``scoring``. The k-mer baselines: ``kmers``, ``markov``,
``smoothing``, ``reference_markov``, ``markov_fields``. The wire format every message uses:
``wire``; the Flower app and its bundle's digest: ``app_bundle``; the run directory's layout:
``run_layout``. Plumbing: ``atomic``, ``processes``, ``preflight``, ``tls``, ``flower_patches``.
"""
