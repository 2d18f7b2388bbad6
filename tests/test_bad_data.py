"""Input that makes no sense is refused with the reason, or warned about: augmentation larger than the images, an
image folder of one class, empty text given to a model, a schedule the trainer gives no length; and the user's own
corpus read as it is (TSV columns, pipes), with what the split and the length filter did said plainly."""

import os
import threading
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer, write_images
from safetensors.torch import load_file

import zoo
from datamodules import DatasetError
from datamodules._augment import augmentation
from datamodules.charlm import CharLMDataModule
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from datamodules.conll import CoNLLDataModule
from datamodules.images import ImageFolderDataModule
from datamodules.names import NamesDataModule
from datamodules.translation import WORD, TranslationDataModule
from zoo.cli.card import model_card
from zoo.weights import checkpoint_dir

FAST_IMAGES = dict(num_workers=0, batch_size=4, eval_batch_size=8, image_size=8)
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


# -- augmentation -------------------------------------------------------------------------------------------------
def test_a_cutout_larger_than_the_images_is_refused(tmp_path):
    folder = write_images(tmp_path / "photos")
    with pytest.raises(ValueError, match=r"cutout=999 is larger than the 8x8 training images"):
        ImageFolderDataModule(root=str(folder), cutout=999, **FAST_IMAGES)
    ImageFolderDataModule(root=str(folder), cutout=8, **FAST_IMAGES)  # the whole side is still a choice
    # where the pipeline is built: CIFAR-10's (32x32) is refused at setup even though __init__ did not know the size
    with pytest.raises(ValueError, match=r"cutout=999 is larger than the 32x32 training images"):
        CIFAR10DataModule(cutout=999).train_transform()
    with pytest.raises(ValueError, match="cutout=33 is larger than the 32x32"):
        augmentation(
            hflip=0.5, vflip=0.0, crop_padding=4, padding_mode="constant", rotation=0.0, scale=None, noise_std=0.0,
            cutout=33, size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD,
        )  # fmt: skip


@pytest.mark.parametrize(
    "flag,msg",
    [
        (dict(cutout=-1), r"cutout must be >= 0 .*got -1"),
        (dict(crop_padding=-2), r"crop_padding must be >= 0 .*got -2"),
        (dict(num_workers=-1), r"num_workers must be >= 0"),
        (dict(batch_size=0), r"batch_size must be >= 1, got 0"),
    ],
    ids=["cutout", "crop_padding", "num_workers", "batch_size"],
)
def test_negative_augmentation_values_name_their_flag(tmp_path, flag, msg):
    with pytest.raises(ValueError, match=msg):
        ImageFolderDataModule(root=str(tmp_path), **{**FAST_IMAGES, **flag})


# -- image folders ------------------------------------------------------------------------------------------------
def test_a_folder_of_one_class_is_refused(tmp_path):
    pool = write_images(tmp_path / "pool", classes=["cat"])
    with pytest.raises(DatasetError, match=r"pool has 1 class folder \(cat/\): a classifier needs at least 2"):
        assert ImageFolderDataModule(root=str(pool), **FAST_IMAGES).num_classes
    split = tmp_path / "split"
    write_images(split / "train", classes=["dog"])
    write_images(split / "val", classes=["dog"])
    with pytest.raises(DatasetError, match=r"split/train has 1 class folder \(dog/\)"):
        ImageFolderDataModule(root=str(split), **FAST_IMAGES).setup("fit")
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        zoo.create_model("lenet5", num_classes=1)


# -- empty text given to a model ----------------------------------------------------------------------------------
def _word_spec(words: list[str]) -> dict:
    return {"tokenizer": "word", "lowercase": False, "vocab": SPECIALS + words, "pattern": WORD}


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "classifier":
        model = zoo.create_model(
            "gru_classifier", vocab=["<pad>", "<unk>", "a", "b"], classes=["x", "y"], embed_dim=4, hidden_size=4
        )
        return model, model.predict, "text"
    if kind == "translator":
        model = zoo.create_model(
            "seq2seq_gru_attn",
            src_spec=_word_spec(["ein", "hund"]),
            tgt_spec=_word_spec(["a", "dog"]),
            embed_dim=4,
            hidden_size=4,
        )
        return model, model.translate, "source sentence"
    if kind == "tagger":
        model = zoo.create_model(
            "bilstm_crf",
            words=["<pad>", "<unk>", "eu"],
            chars=["<pad>", "<unk>", "E", "U"],
            tags=["NOUN", "VERB"],
            word_dim=4,
            hidden_size=4,
            net_kwargs={"char_dim": 4, "char_hidden": 4},
        )
        return model, model.predict, "sentence"
    model = zoo.create_model("lstm_lm", vocab=["<unk>", "a", "b", " ", "\n"], embed_dim=4, hidden_size=4, num_layers=1)
    return model, model.predict, "prompt"


@pytest.mark.parametrize("kind", ["classifier", "translator", "tagger", "language_model"])
def test_empty_inputs_are_refused_naming_which(kind):
    model, predict, what = _tiny(kind)
    with pytest.raises(ValueError, match=rf"{what} 1 \(''\) is empty"):
        predict(["a", ""])
    if kind != "language_model":  # blanks are text to continue for a character model (below)
        with pytest.raises(ValueError, match=rf"{what} 0 \(' \\t '\) is (empty or )?only whitespace"):
            predict(" \t ")
    with pytest.raises(ValueError, match=f"no {what} given"):
        predict([])
    known = {"translator": "ein hund", "tagger": "EU"}.get(kind, "a b")
    assert len(predict([known])) == 1  # text still gets its answer


def test_a_pre_split_sentence_with_an_empty_word_is_refused():
    model, _, _ = _tiny("tagger")
    with pytest.raises(ValueError, match=r"sentence 0, word 1 \(''\) is empty"):
        model.tag([["EU", ""]])


def test_prompts_of_blanks_are_text_for_characters_not_for_words():
    model, _, _ = _tiny("language_model")
    assert model.generate("\n", 3, seed=0).startswith("\n")  # a line end starts a fresh line
    words = zoo.create_model(
        "lstm_lm", vocab=["<unk>", "a", "b"], tokenizer="whitespace", embed_dim=4, hidden_size=4, num_layers=1
    )
    with pytest.raises(ValueError, match=r"prompt 0 \('  '\) has no token: give it at least one word"):
        words.generate("  ", 3)


@pytest.mark.parametrize("kind", ["classifier", "translator", "language_model"])
def test_inputs_of_unknown_tokens_only_are_warned_about(kind):
    model, predict, what = _tiny(kind)
    with pytest.warns(UserWarning, match=rf"{what} 0: none of its 3 tokens is in the model's vocabulary"):
        predict(["xyz"] if kind != "translator" else ["zwei drei vier"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(["ab"] if kind != "translator" else ["ein hund"])  # known tokens: no warning


# -- schedules under a time limit ---------------------------------------------------------------------------------
def _pairs(path: Path, n: int = 60) -> Path:
    path.write_text("".join(f"ein hund {i % 7} .\ta dog {i % 7} .\n" for i in range(n)), encoding="utf-8")
    return path


def _translator(**kw):
    return zoo.create_model("seq2seq_gru_attn", embed_dim=8, hidden_size=8, **kw)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_max_time_alone_refuses_a_schedule_that_needs_a_length_before_the_data_loads(tmp_path, schedule):
    dm = TranslationDataModule(path=str(_pairs(tmp_path / "p.tsv")), batch_size=8, min_freq=1)
    trainer = quiet_trainer(tmp_path, max_epochs=None, max_time="00:00:00:30")
    with pytest.raises(ValueError, match=rf"the {schedule} schedule.* has no length: also set --trainer.max_epochs"):
        trainer.fit(_translator(schedule=schedule), dm)
    assert not dm.datasets  # refused before the corpus was read


def test_a_constant_schedule_runs_under_max_time_and_warms_up_over_real_epochs(tmp_path):
    dm = TranslationDataModule(path=str(_pairs(tmp_path / "p.tsv")), batch_size=8, min_freq=1)  # 54 pairs: 7 batches
    model = _translator(schedule="constant", warmup_epochs=2)
    trainer = quiet_trainer(tmp_path, max_epochs=None, max_time="00:00:00:02", limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.global_step > 0 and model.schedule_steps() == (0, 14)
    bounded = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)  # max_steps: an epoch is still 7 steps
    bounded.fit(model := _translator(warmup_epochs=0.5), dm)
    assert model.schedule_steps() == (3, 3)


# -- the user's own corpus ----------------------------------------------------------------------------------------
def test_tsv_columns_are_chosen_and_checked(tmp_path):
    path = tmp_path / "tatoeba.tsv"
    path.write_text("".join(f"{i}\tein hund {i} .\t{i + 100}\ta dog {i} .\n" for i in range(40)), encoding="utf-8")
    dm = TranslationDataModule(path=str(path), source_column=1, target_column=-1, min_freq=1)
    dm.setup("fit")
    assert all(r.startswith("a dog") for r in dm.references["val"]) and "hund" in dm.src_spec["vocab"]
    with pytest.raises(DatasetError, match=r"tatoeba.tsv, line 1: 4 columns, no column 4 \(--data.source_column\)"):
        TranslationDataModule(path=str(path), source_column=4).setup("fit")
    with pytest.raises(ValueError, match="pick the columns of a .tsv file given as --data.path"):
        TranslationDataModule(source=str(path), source_column=1)
    (tmp_path / "splits").mkdir()
    with pytest.raises(DatasetError, match="is a folder of split files: source_column / target_column"):
        TranslationDataModule(path=str(tmp_path / "splits"), target_column=3).setup("fit")


def _fifo(path: Path, text: str) -> Path:
    """A named pipe at ``path`` that a thread fills with ``text`` once, when a reader opens it."""
    os.mkfifo(path)
    threading.Thread(target=path.write_text, args=(text,), kwargs={"encoding": "utf-8"}, daemon=True).start()
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_pipes_are_read_as_files_and_only_once(tmp_path):
    src = "".join(f"ein hund {i} .\n" for i in range(40))
    tgt = "".join(f"a dog {i} .\n" for i in range(40))
    dm = TranslationDataModule(source=str(_fifo(tmp_path / "src", src)), target=str(_fifo(tmp_path / "tgt", tgt)))
    assert sum(len(p) for p in dm.load_pairs().values()) == 40
    alone = TranslationDataModule(source=str(_fifo(tmp_path / "alone", src)))  # its own target: one read
    assert all(a == b for pairs in alone.load_pairs().values() for a, b in pairs)
    tsv = TranslationDataModule(path=str(_fifo(tmp_path / "tsv", "".join(f"x {i}\ty {i}\n" for i in range(40)))))
    assert len(tsv.load_pairs()["train"]) == 36
    with pytest.raises(DatasetError, match="is a folder: give a text file"):
        TranslationDataModule(source=str(tmp_path)).load_pairs()
    with pytest.raises(DatasetError, match="no file at"):
        TranslationDataModule(source=str(tmp_path / "missing.de")).load_pairs()


def test_max_len_is_documented_in_the_help():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(TranslationDataModule, "data")
    text = " ".join(parser.format_help().split())
    assert "longer training pairs are left out, and the log says how many" in text
    assert "the column of a ``.tsv`` file holding the source (0-based" in text


# -- what the model card says of the splits -----------------------------------------------------------------------
def test_split_descriptions_say_which_split_was_used(tmp_path):
    assert TranslationDataModule.describe_splits({})["val"] == "Multi30k's own validation split (val.de / val.en)"
    tsv = TranslationDataModule.describe_splits({"path": "corpus.tsv", "val_fraction": 0.02})
    assert tsv["val"] == "held out of the data by TranslationDataModule (val_fraction=0.02, split_seed=0)"
    assert "own" in TranslationDataModule.describe_splits({"path": str(tmp_path)})["test"]
    assert CIFAR10DataModule.describe_splits({})["val"].startswith("5,000 examples held out of train")
    assert CIFAR10DataModule.describe_splits({})["test"] == "the dataset's own test split"
    assert "test_fraction=0.1" in NamesDataModule.describe_splits({})["test"]
    assert CharLMDataModule.describe_splits({})["test"].startswith("the last 10% of the text")
    assert CoNLLDataModule.describe_splits({})["val"] == "the dataset's own validation split"
    root = tmp_path / "own"
    write_images(root / "train")
    write_images(root / "val")
    images = ImageFolderDataModule.describe_splits({"root": str(root)})
    assert images["val"] == f"the folder's own val split ({root / 'val'})"
    assert images["test"].startswith("10% of each class held out of train")
    card = model_card("seq2seq_gru_attn.multi30k_de_en")
    assert (
        card["evaluation"]["val_split"] == "Multi30k's own validation split (val.de / val.en), used for model selection"
    )


# -- fine-tuning on a vocabulary the weights barely know ----------------------------------------------------------
class _KeepEmbedding(L.Callback):
    """Keeps the embedding as training starts (the net is rebuilt from the data's vocabulary at setup)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = pl_module.net.state_dict()["encoder.embedding.weight"].clone()


def test_finetuning_on_unknown_words_warns_and_trains_their_rows_alone(tmp_path):
    from datamodules.text_classification import TextClassificationDataModule

    rows = [("Иванов", "ru"), ("Петров", "ru"), ("Ли", "zh"), ("Ван", "zh")] * 6  # Cyrillic: not in the weights
    path = tmp_path / "names.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    dm = TextClassificationDataModule(str(path), tokenizer="char", batch_size=8)
    model = zoo.create_model("gru_classifier", pretrained="names", freeze="backbone", lr=0.05, schedule="constant")
    keep = _KeepEmbedding()
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[keep])
    with pytest.warns(UserWarning, match=r"gru_classifier.names knows only 2 of the data's \d+ vocab entries \("):
        trainer.fit(model, dm)
    published = {
        k: v.float() for k, v in load_file(checkpoint_dir() / zoo.get_weights("gru_classifier.names").file).items()
    }
    old, new = zoo.get_weights("gru_classifier.names").kwargs["vocab"], model.hparams.vocab
    state = model.net.state_dict()
    emb = state["encoder.embedding.weight"]
    assert torch.equal(emb[new.index("<unk>")], published["encoder.embedding.weight"][old.index("<unk>")])
    assert torch.equal(state["encoder.layers.0.weight_hh_l0"], published["encoder.layers.0.weight_hh_l0"])
    fresh = [new.index(c) for c in "Иванов"]
    assert not model.known_rows["encoder.embedding.weight"][fresh].any()
    assert not torch.equal(emb[fresh], keep.start[fresh])  # the new rows learnt, with the backbone frozen
