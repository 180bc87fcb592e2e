"""fedgenome client: a hospital's ClientApp and round, its egress guard, the worker, the SuperNode."""
