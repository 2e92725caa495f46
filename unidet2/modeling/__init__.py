"""Modeling pieces shared by the methods."""

from .text_classifier import TextEmbeddingClassifier, load_embeddings
from .vocabulary import VocabularyState, find_text_classifiers, restore_vocabulary, set_vocabulary

__all__ = [
    "TextEmbeddingClassifier",
    "VocabularyState",
    "find_text_classifiers",
    "load_embeddings",
    "restore_vocabulary",
    "set_vocabulary",
]
