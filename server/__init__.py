"""fedgenome server: the ServerApp (rounds, validation, strategies, SecAgg+), run report, PKI, deployment."""
