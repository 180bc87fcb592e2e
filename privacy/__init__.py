"""fedgenome privacy package."""
