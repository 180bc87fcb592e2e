"""Plain-PyTorch core of fedgenome: tokenizer, model, genomes, datasets, training, checkpoints."""
