"""Data layer: dataset registration, synthetic data, unified label space, text embeddings, mapper, sampler."""
