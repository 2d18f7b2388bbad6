"""LightningModules: loss, metrics, optimisers and schedules around a net from ``zoo.nets``."""

from zoo.tasks.image import ImageClassifier
from zoo.tasks.language_model import LanguageModel
from zoo.tasks.sequence import SequenceClassifier
from zoo.tasks.tagging import Tagger
from zoo.tasks.translation import Seq2Seq

__all__ = ["ImageClassifier", "LanguageModel", "Seq2Seq", "SequenceClassifier", "Tagger"]
