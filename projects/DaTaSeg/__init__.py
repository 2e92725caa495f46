"""DaTaSeg project (Gu et al., NeurIPS 2023): one universal segmenter trained on several datasets and tasks."""
