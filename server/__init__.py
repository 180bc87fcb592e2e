"""The consortium's side: the Flower ServerApp and everything the aggregator runs.

``app`` (the ServerApp: unpack, call :mod:`.rounds`, pack), ``rounds`` (the federation loop: quorum,
sampling, collection, aggregation, evaluation, checkpoints, the run report), ``replies`` and the
checks a reply must pass (``identity``, ``epsilon_check``, ``site_policy``, ``ledger_heads``,
``validation``), ``strategies`` and ``secagg`` (aggregation), ``report`` (the run report),
``deploy`` (SuperLink processes, ``flwr`` commands, run submission) and
``progress`` (following a run), ``pki`` and ``pki_checks`` (the consortium PKI). Never imports
:mod:`fedgenome.client`.
"""
