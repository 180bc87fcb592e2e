"""Whole experiments on one machine: federations and training runs, start to finish.

On top of every layer (it starts client and server processes, so it sits above both): the CLI's
commands parse their options, call one function here and print what it returns. It owns

* :mod:`fedgenome.experiments.runner`: the one sequence every federated experiment runs (fetch
  the data, build the hospital sites, prepare the run directory, start the local federation with
  its PKI, submit, follow the rounds, publish the PKI's public part, check the run completed),
  used by ``fedgenome demo``, ``fedgenome audit canaries`` and the deployment benchmarks;
* :mod:`fedgenome.experiments.localfed`: the local federation (a SuperLink, one authenticated
  SuperNode and ClientApp worker per site, the run's consortium PKI) as real processes;
* :mod:`fedgenome.experiments.inprocess`: the same rounds in one process (tests, benchmarks);
* :mod:`fedgenome.experiments.demo`: the demo's experiment, its summary and its table;
* :mod:`fedgenome.experiments.federated_run`: submitting a run to a remote SuperLink and following it;
* :mod:`fedgenome.experiments.training`: the centralized runs behind ``fedgenome train`` (plain
  or patient-level DP).
"""
