"""fedgenome privacy: DP-SGD training of a site's model, its accountants, and its signed ledger.

DP training (:mod:`~fedgenome.privacy.engine`, :mod:`~fedgenome.privacy.trainer` and their helpers),
the accountants (:mod:`~fedgenome.privacy.accounting`), the site's keys and where it keeps them
(:mod:`~fedgenome.privacy.keys`, :mod:`~fedgenome.privacy.site_state`) and the ledger
(:mod:`fedgenome.privacy.ledger`). No flwr. Auditing the ledgers is :mod:`fedgenome.audit`'s.
"""
