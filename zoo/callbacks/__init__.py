"""Callbacks of the zoo, one per file: ``train.py`` adds ``TrainingRecord`` (and ``PredictionSaver`` for predict)
by default; ``HiddenStateGradients`` is opt-in (``--trainer.callbacks+=HiddenStateGradients``)."""

from zoo.callbacks.hidden_state_gradients import HiddenStateGradients
from zoo.callbacks.prediction_saver import PredictionSaver
from zoo.callbacks.training_record import TrainingRecord, hardware_string

__all__ = ["TrainingRecord", "PredictionSaver", "HiddenStateGradients", "hardware_string"]
