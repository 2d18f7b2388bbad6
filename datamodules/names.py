"""Surnames by language (the PyTorch char-RNN classification tutorial's 18 files, 20,074 names): character-level
classification of a surname into its language.

Reads ``<data_dir>/names/<Language>.txt`` (UTF-8, one surname per line). Names repeated inside a language file
(Arabic has many) are kept once, so that no name sits in both the train and the test split of its class; a name
listed under several languages stays in each (the task is ambiguous there, as in the tutorial). The split is
stratified by language and seeded: 80/10/10 by default. Classes are very unbalanced (Russian 9,408, Vietnamese
73): ``class_weights`` (inverse frequency) is there for a weighted loss, and macro-F1 is reported beside accuracy.

The files are not downloaded: they come with the tutorial's ``data.zip`` (download.pytorch.org/tutorial/data.zip,
folder ``data/names``).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from datamodules import DatasetError, default_data_dir
from datamodules.text_classification import Example, TextClassificationDataModule, stratified_split

__all__ = ["NamesDataModule"]


class NamesDataModule(TextClassificationDataModule):
    """Args: ``data_dir`` holding ``names/`` (or the ``names`` folder itself); the rest as
    :class:`~datamodules.text_classification.TextClassificationDataModule` (character tokens)."""

    licence = (  # of the default dataset; shown by `zoo info`
        "no separate data licence: published with the PyTorch tutorials (a BSD-3-Clause repository)"
    )

    default_tokenizer = "char"

    def __init__(
        self,
        data_dir: str | None = None,
        lowercase: bool = False,
        min_freq: int = 1,
        max_length: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            tokenizer="char",
            lowercase=lowercase,
            min_freq=min_freq,
            max_length=max_length,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
        )
        self.save_hyperparameters()

    def folder(self) -> Path:
        root = Path(self.hparams.data_dir).expanduser() if self.hparams.data_dir else default_data_dir()
        return root / "names" if (root / "names").is_dir() else root

    def load_examples(self) -> dict[str, list[Example]]:
        folder = self.folder()
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise DatasetError(
                f"no <Language>.txt files in {folder}: put the surname files (data/names/*.txt from "
                "https://download.pytorch.org/tutorial/data.zip) there, or pass --data.data_dir"
            )
        examples: list[Example] = []
        repeated = 0
        for f in files:
            try:
                lines = f.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise DatasetError(f"{f} is not UTF-8 text ({e})") from e
            self._read_from(f)
            names = [n.strip() for n in lines if n.strip()]
            unique = list(dict.fromkeys(names))
            repeated += len(names) - len(unique)
            examples += [(n, f.stem) for n in unique]
        rank_zero_info(f"names: {len(examples)} names in {len(files)} languages ({repeated} repeats dropped)")
        h = self.hparams
        return stratified_split(examples, h.val_fraction, h.test_fraction, h.split_seed)
