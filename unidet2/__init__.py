"""unidet2: one detector or segmenter trained across many datasets, on detectron2."""

__version__ = "0.1.0"
