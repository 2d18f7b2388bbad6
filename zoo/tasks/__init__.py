"""LightningModules: loss, metrics, optimisers and schedules around a net from ``zoo.nets``."""

from zoo.tasks.image import ImageClassifier
from zoo.tasks.sequence import SequenceClassifier

__all__ = ["ImageClassifier", "SequenceClassifier"]
