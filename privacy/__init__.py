"""Differential privacy with the patient as the unit: DP-SGD training, accounting and the ledger.

Training: ``engine`` (Opacus' PrivacyEngine with per-patient sampling), ``trainer`` (one private
round), ``round_plan`` (the DP round plan: settings, sample rate, noise), ``grad_samplers``,
``lean_backward``, ``dp_optimizer``, ``proximal``, ``optim_state``. Accounting: ``mechanism``,
``accounting`` (RDP, PRV and PLD accountants). The signed, hash-chained privacy ledger of each
site and its keys: ``ledger*``, ``keys``, ``site_state``. Imports no flwr.
"""
