"""LightningModules: loss, metrics, optimisers and schedules around a net from ``zoo.nets``. ``Task`` is the base
of them all (fine-tuning, resume, the headline metric); CONTRIBUTING.md says how to add one."""

from zoo.tasks._base import Task
from zoo.tasks.image import ImageClassifier
from zoo.tasks.language_model import LanguageModel
from zoo.tasks.sequence import SequenceClassifier
from zoo.tasks.tagging import Tagger
from zoo.tasks.translation import Seq2Seq

__all__ = ["Task", "ImageClassifier", "LanguageModel", "Seq2Seq", "SequenceClassifier", "Tagger"]
