"""LightningModules: loss, metrics, optimisers and schedules around a net from ``zoo.nets``."""

from zoo.tasks.image import ImageClassifier
from zoo.tasks.language_model import LanguageModel
from zoo.tasks.sequence import SequenceClassifier

__all__ = ["ImageClassifier", "LanguageModel", "SequenceClassifier"]
