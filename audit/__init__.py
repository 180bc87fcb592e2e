"""fedgenome audit: checking what a run spent, without trusting the operator or the sites.

* :mod:`fedgenome.audit.verify`: a site's ledger verified (signatures, chain, head, key rotations)
  and its ε recomputed with two accountants, against its budget (``fedgenome audit verify``);
  :mod:`fedgenome.audit.results` holds the frozen records it returns.
* :mod:`fedgenome.audit.sources`: where an audit finds the ledgers, the sites' keys and budgets.
* :mod:`fedgenome.audit.report`: a run directory's ledgers cross-checked with its run report, as HTML
  (:mod:`fedgenome.audit.html`, plots from :mod:`fedgenome.audit.plots`, which needs matplotlib: the
  ``audit`` extra) and JSON (``fedgenome audit report``).
* :mod:`fedgenome.audit.empirical`: the one-run lower bound on ε from canary guesses, and exposure;
  :mod:`fedgenome.audit.canaries` draws, seals, commits and plants canaries and audits a model on
  them; :mod:`fedgenome.audit.canary_run` does it in a real federated run, on the experiment runner
  of :mod:`fedgenome.experiments` (``fedgenome audit canaries``).

On top of the layers: it reads what :mod:`fedgenome.privacy` and :mod:`fedgenome.server` write,
through :mod:`fedgenome.shared.run_layout`. Never the CLI: ``fedgenome.cmd_audit`` calls it.
"""
