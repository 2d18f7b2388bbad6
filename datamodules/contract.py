"""The contract between the DataModules (``datamodules``) and the tasks (``zoo.tasks``), written down once.

The tasks never import a DataModule: a model has to load, read raw strings and decode image files with no data
at hand. So what the two sides must agree on lives here, and both import it:

- what each kind of task reads of its DataModule at ``setup`` (the ``Protocol`` classes below);
- the special tokens and their ids;
- the tokenisers, the functions themselves (a model encodes raw text with the one its data was read with);
- the number of characters of a word the taggers read by default;
- how an image file or a PIL image becomes pixels (a model reads a file as its DataModule read its files);
- which files ``setup`` read (:class:`DataFiles`), the one thing of a DataModule the run metadata reads.

It is a leaf: nothing of ``zoo``, of Lightning or of the other ``datamodules`` modules is imported here (an
import-linter contract in pyproject.toml), so a task that imports it pulls in no data code.

Reading a DataModule: each small protocol (``Configured``, ``Labelled``, ``Preprocessed``, ``Tokenised``) is
runtime-checkable, so a task asks ``isinstance(dm, Labelled)`` and goes on without what a DataModule does not
give (a user's DataModule, or loaders passed to the trainer directly: no DataModule at all). The protocols of
the tasks (``ImageData`` ... ``TaggingData``) say everything each task reads; optional members are named in
their docstrings. ``isinstance`` on a protocol with data members looks each member up, which runs a property
(``ImageFolderDataModule.classes`` lists folders): only ask where the task reads the member anyway.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "PAD",
    "UNK",
    "BOS",
    "EOS",
    "TEXT_SPECIALS",
    "SEQ2SEQ_SPECIALS",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "TOKENIZERS",
    "tokenizer",
    "char_tokenize",
    "whitespace_tokenize",
    "WORD",
    "MAX_WORD_LEN",
    "IMAGE_MODES",
    "image_mode",
    "upright",
    "open_image",
    "Configured",
    "Labelled",
    "Preprocessed",
    "Tokenised",
    "Vocabulary",
    "Licensed",
    "DataFiles",
    "ImageData",
    "TextClassificationData",
    "LanguageModelData",
    "TranslationData",
    "TaggingData",
    "settings",
]

# -- special tokens -----------------------------------------------------------------------------------------------
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
TEXT_SPECIALS = (PAD, UNK)  # first in a classification or tagging vocabulary (``datamodules.text.Vocab``)
SEQ2SEQ_SPECIALS = (PAD, UNK, BOS, EOS)  # first on both sides of a translation
# their ids in a vocabulary that starts with either (a language model's starts with UNK alone: 0 there)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SEQ2SEQ_SPECIALS))


# -- tokenisers ---------------------------------------------------------------------------------------------------
def char_tokenize(text: str) -> list[str]:
    return list(text)


def whitespace_tokenize(text: str) -> list[str]:
    return text.split()


# words of a translation's ``word`` tokeniser, and the words that word-level BLEU counts for either tokeniser: runs
# of letters/digits with inner apostrophes and hyphens kept, every other non-space character on its own
WORD = r"\w+(?:['’-]\w+)*|[^\w\s]"


# by the name a DataModule's ``tokenizer`` and a task's ``tokenizer`` hyperparameter hold
TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"char": char_tokenize, "whitespace": whitespace_tokenize}


def tokenizer(name: str) -> Callable[[str], list[str]]:
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}; got {name!r}")
    return TOKENIZERS[name]


# -- taggers ------------------------------------------------------------------------------------------------------
MAX_WORD_LEN = 30  # characters read of a word, unless a tagging DataModule (``max_word_len``) says otherwise


# -- images -------------------------------------------------------------------------------------------------------
IMAGE_MODES = {3: "RGB", 1: "L"}  # the PIL mode files and PIL images are converted to, by number of channels


def image_mode(channels: int) -> str:
    if channels not in IMAGE_MODES:
        raise ValueError(f"the model takes {channels}-channel images, which no image file holds: give tensors")
    return IMAGE_MODES[channels]


def upright(im: Image.Image, mode: str) -> Image.Image:
    """``im`` with its EXIF orientation applied and converted to ``mode`` (``RGB`` or ``L``) whatever its own (L,
    RGBA, P, CMYK, 16-bit ...; transparency is dropped)."""
    im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF, not in the pixels
    if im.mode == "P" and "transparency" in im.info:  # PIL warns on P -> RGB with transparency
        im = im.convert("RGBA")
    if im.mode.startswith("I"):  # 16/32-bit (PNG, TIFF-like): PIL's convert would clip to white
        im = Image.fromarray((np.asarray(im, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8))
    return im.convert(mode)


def open_image(path: str | Path, mode: str, size: int) -> Image.Image:
    """The image file at ``path``, decoded by :func:`upright`. JPEGs are decoded at the smallest scale (1/2 to
    1/8) that still gives ``size`` pixels a side: the image is resized to ``size`` afterwards anyway.

    An image of more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` (``None``: no limit) is refused (``ValueError``)
    before its pixels are decoded: a small file can claim a size that takes gigabytes to decode (a decompression
    bomb), and PIL itself only warns up to twice the limit. PIL's own errors pass through: each side says what they
    mean for it, and names the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)  # reads the header only; PIL compares the size it claims with the limit here
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ValueError(f"refused before decoding: {str(e).rstrip('.')} (Image.MAX_IMAGE_PIXELS)") from e
    with im:
        im.draft(mode, (size, size))
        return upright(im, mode)


# -- what the tasks read of a DataModule --------------------------------------------------------------------------
@runtime_checkable
class Configured(Protocol):
    """Every LightningDataModule: its settings (the arguments ``save_hyperparameters`` kept; empty without)."""

    hparams: Mapping[str, Any]


def settings(dm: object) -> Mapping[str, Any]:
    """The settings of ``dm`` (see :class:`Configured`); empty without a DataModule."""
    return dm.hparams if isinstance(dm, Configured) else {}


@runtime_checkable
class Labelled(Protocol):
    """Class names, by label id: the classifier's outputs."""

    classes: Sequence[str]


@runtime_checkable
class Preprocessed(Protocol):
    """How an image becomes the net's input at evaluation, as data (the format of a published weights entry):
    ``{"input_size": [C, H, W], "scale": "uint8 / 255", "mean": [...], "std": [...]}``."""

    preprocessing: Mapping[str, Any]


@runtime_checkable
class Vocabulary(Protocol):
    """Tokens by id (``datamodules.text.Vocab``): a task keeps the list in its hyperparameters."""

    itos: list[str]


@runtime_checkable
class Tokenised(Protocol):
    """A token vocabulary (``None`` for data of float features, which give ``input_size`` instead)."""

    vocab: Vocabulary | None


@runtime_checkable
class Licensed(Protocol):
    """The terms of the default dataset, a class attribute (``zoo info`` shows it)."""

    licence: str


@runtime_checkable
class DataFiles(Protocol):
    """``data_files()``: the files ``setup`` read (absolute paths, each once, in reading order; ``[]`` before
    ``setup``), as the DataModule recorded them where it opened them. A run logs their sha256
    (``zoo.callbacks.run_metadata``), so runs can be grouped by the exact data they read and a changed file shows.
    ``[]`` after ``setup``: data generated from no file, identified by its settings (``datamodules.synthetic``)."""

    def data_files(self) -> list[Path]: ...


class ImageData(Labelled, Preprocessed, Configured, Protocol):
    """What ``ImageClassifier`` reads, each member optional: ``classes``, ``preprocessing`` and the setting
    ``channels`` (1 or 3: images are converted to L or RGB)."""


class TextClassificationData(Tokenised, Labelled, Configured, Protocol):
    """What ``SequenceClassifier`` reads: ``vocab`` and ``classes``; the settings ``tokenizer`` (a name of
    ``TOKENIZERS``) and ``lowercase``. Optional: ``objective`` (``classify``, ``tag`` or ``regress``; default
    the model's), ``input_size`` (float features), ``default_tokenizer`` (when the setting is not saved) and
    ``class_weights`` (per class, for a weighted loss)."""


class LanguageModelData(Tokenised, Configured, Protocol):
    """What ``LanguageModel`` reads: ``vocab``; the settings ``tokenizer`` and ``seq_len`` (tokens per window)."""


@runtime_checkable
class TranslationData(Protocol):
    """What ``Seq2Seq`` reads: each side's spec, ``{"tokenizer": "word" | "bpe", "lowercase", "vocab", "pattern"
    (word) | "bpe" (the serialised tokenizers model)}``, with the ``SEQ2SEQ_SPECIALS`` first in ``vocab``.
    Optional: ``references``, the raw target sentences by split, indexed by the batches' ``index``."""

    src_spec: dict[str, Any] | None
    tgt_spec: dict[str, Any] | None


@runtime_checkable
class TaggingData(Configured, Protocol):
    """What ``Tagger`` reads: the vocabularies of ``words`` (lowercased when the setting ``lowercase`` is on),
    ``chars`` (``TEXT_SPECIALS`` first in both) and ``tags``; the settings ``scheme`` (of chunk tags),
    ``lowercase`` and ``max_word_len`` (characters read of a word)."""

    words: Vocabulary
    chars: Vocabulary
    tags: Vocabulary
