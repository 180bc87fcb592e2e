"""The hospital's side: the Flower ClientApp and the node that runs it next to the site's genomes.

``app`` (the ClientApp: unpack, call :mod:`.site`, pack), ``site`` (one round at a site: its data,
the DP round, the ledger entry), ``egress`` (the guard on everything that leaves the site),
``outgoing`` (exactly-once updates), ``cache`` (immutable site data kept between messages),
``node``, ``supernode``, ``supervisor``, ``worker`` and ``app_loader`` (the SuperNode process, its
long-lived ClientApp worker and their restarts), ``trust`` (the app bundles the node runs).
Never imports :mod:`fedgenome.server`.
"""
