"""LightningDataModules. Each takes ``data_dir`` (default: ``$ZOO_DATA_DIR``, else ``~/.cache/zoo/data``), except
``images``: the user's own folder, ``root``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATAMODULES", "default_data_dir", "DatasetError"]

# Short names accepted by ``train.py --data NAME``.
DATAMODULES = {
    "cifar10": "datamodules.cifar10.CIFAR10DataModule",
    "images": "datamodules.images.ImageFolderDataModule",
    "names": "datamodules.names.NamesDataModule",
    "charlm": "datamodules.charlm.CharLMDataModule",
    "adding": "datamodules.synthetic.AddingDataModule",
    "copy": "datamodules.synthetic.CopyMemoryDataModule",
    "text": "datamodules.text_classification.TextClassificationDataModule",
    "translation": "datamodules.translation.TranslationDataModule",
    "conll": "datamodules.conll.CoNLLDataModule",
    "conllu": "datamodules.conll.CoNLLUDataModule",
}


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or does not have the expected structure; the message says what to do."""


def default_data_dir() -> Path:
    return Path(os.environ.get("ZOO_DATA_DIR") or Path.home() / ".cache" / "zoo" / "data").expanduser()
