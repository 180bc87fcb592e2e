"""fedgenome: federated, differentially private genome language models."""
