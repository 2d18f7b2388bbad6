"""LightningModules: loss, metrics, optimisers and schedules around a net from ``zoo.nets``."""

from zoo.tasks.image import ImageClassifier

__all__ = ["ImageClassifier"]
