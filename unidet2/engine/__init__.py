"""Training engine: trainer, hooks, atomic checkpoints."""
