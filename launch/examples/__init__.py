"""Tiny runnable examples of the launcher and engine (toy model, synthetic data, example pipeline)."""
