"""fedgenome server package."""
