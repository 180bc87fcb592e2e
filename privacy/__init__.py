"""Differential privacy with the patient as the unit: DP-SGD training, accounting and the ledger.

Training: ``engine`` (Opacus' PrivacyEngine with per-patient sampling), ``trainer`` (one private
round), ``round_plan`` (the DP round plan: settings, sample rate, noise), ``grad_samplers``,
``lean_backward``, ``dp_optimizer``, ``proximal``, ``optim_state``. Accounting: ``mechanism``,
``accounting`` (RDP, PRV and PLD accountants). The site's keys and where it keeps them: ``keys``,
``site_state``; its signed, hash-chained ledger: :mod:`fedgenome.privacy.ledger`. Imports no flwr;
auditing the ledgers is :mod:`fedgenome.audit`'s.
"""
