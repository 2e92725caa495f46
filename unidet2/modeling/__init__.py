"""Modeling pieces shared by the methods."""

from .similarity import VocabularySimilarity
from .text_classifier import TextEmbeddingClassifier, load_embeddings
from .vocabulary import (
    VocabularyState,
    dataset_vocabulary,
    find_text_classifiers,
    restore_vocabulary,
    set_vocabulary,
    vocabulary_options,
)

__all__ = [
    "TextEmbeddingClassifier",
    "VocabularySimilarity",
    "VocabularyState",
    "dataset_vocabulary",
    "find_text_classifiers",
    "load_embeddings",
    "restore_vocabulary",
    "set_vocabulary",
    "vocabulary_options",
]
