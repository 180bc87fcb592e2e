"""fedgenome client package."""
