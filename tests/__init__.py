"""fedgenome tests."""
