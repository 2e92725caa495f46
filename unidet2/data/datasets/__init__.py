"""Dataset registration: every loader is lazy (no file I/O until the dataset is used)."""
