"""The sha256 of the data a run read (issue 17): every DataModule lists the files its ``setup`` read
(``data_files()``), ``data_digest`` hashes them (one file: its own sha256; several: the sha256 of their sorted
``sha256sum`` listing), and the run metadata logs it; checked against ``hashlib`` on the conftest fixtures."""

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    N_TEST,
    N_TRAIN,
    lenet_args,
    pairs_tsv,
    quiet_trainer,
    run_train,
    tagged_files,
    write_cifar,
    write_images,
    write_names,
)
from lightning.pytorch.loggers import CSVLogger
from wandb_records import WandbRun

import zoo
from datamodules.charlm import CharLMDataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.conll import CoNLLDataModule, CoNLLUDataModule
from datamodules.contract import DataFiles
from datamodules.images import ImageFolderDataModule
from datamodules.names import NamesDataModule
from datamodules.synthetic import AddingDataModule, CopyMemoryDataModule
from datamodules.text_classification import TextClassificationDataModule
from datamodules.translation import TranslationDataModule
from zoo.callbacks import run_metadata
from zoo.callbacks.run_metadata import LONG, RunMetadata, data_digest


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_digest(files: list[Path], root: Path) -> str:
    """The combined digest, computed apart from the code under test: one file's own sha256, else the sha256 of
    the ``sha256sum`` listing sorted by path under ``root``."""
    if len(files) == 1:
        return sha(files[0])
    listing = sorted((f.relative_to(root).as_posix(), sha(f)) for f in files)
    return hashlib.sha256("".join(f"{d}  {n}\n" for n, d in listing).encode()).hexdigest()


# -- one case per DataModule: (a fresh DataModule, the files it must read, an unrelated file beside them) ---------
def cifar_archive(tmp: Path):
    archive = write_cifar(tmp)
    make = lambda: CIFAR10DataModule(  # noqa: E731
        data_dir=str(tmp), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0
    )
    return make, [archive], archive.parent / "README.md"


def cifar_batches(tmp: Path):
    folder = write_cifar(tmp, as_archive=False)
    make = lambda: CIFAR10DataModule(  # noqa: E731
        data_dir=str(tmp), num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0
    )
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
    return make, [folder / n for n in names], folder / "readme.html"


def charlm(tmp: Path, text_path: Path):
    path = Path(shutil.copy(text_path, tmp / "plays.txt"))
    return lambda: CharLMDataModule(path=str(path), batch_size=2, seq_len=8), [path], tmp / "other.txt"


def names(tmp: Path):
    write_names(tmp)
    files = [tmp / "names" / f"{lang}.txt" for lang in ("Japanese", "Russian", "Scottish")]
    return lambda: NamesDataModule(data_dir=str(tmp)), files, tmp / "names" / "README.md"


def texts_file(tmp: Path):
    path = tmp / "texts.csv"
    path.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(20)))
    return lambda: TextClassificationDataModule(path=str(path)), [path], tmp / "notes.csv"


def texts_folder(tmp: Path):
    files = [tmp / f"{split}.csv" for split in ("train", "val", "test")]
    for f in files:
        f.write_text("text,label\nsome words,a\nother words,b\n")
    return lambda: TextClassificationDataModule(path=str(tmp)), files, tmp / "README.md"


def translation_tsv(tmp: Path):
    path = pairs_tsv(tmp)
    return lambda: TranslationDataModule(path=str(path), min_freq=1), [path], tmp / "README.md"


def translation_folder(tmp: Path):
    files = []
    for split in ("train", "val", "test"):
        for lang, words in (("de", "ein hund"), ("en", "a dog")):
            files.append(tmp / f"{split}.{lang}")
            files[-1].write_text("".join(f"{words} {i} .\n" for i in range(6)))
    return lambda: TranslationDataModule(path=str(tmp), min_freq=1), files, tmp / "train.fr"


def translation_pair(tmp: Path):
    src, tgt = tmp / "corpus.de", tmp / "corpus.en"
    src.write_text("".join(f"ein hund {i} .\n" for i in range(40)))
    tgt.write_text("".join(f"a dog {i} .\n" for i in range(40)))
    make = lambda: TranslationDataModule(source=str(src), target=str(tgt), min_freq=1)  # noqa: E731
    return make, [src, tgt], tmp / "corpus.fr"


def conll(tmp: Path):
    folder = tagged_files(tmp, "conll")
    files = [folder / f"{split}.txt" for split in ("train", "dev", "test")]
    return lambda: CoNLLDataModule(path=str(folder), batch_size=2), files, folder / "README.md"


def conllu(tmp: Path):
    folder = tagged_files(tmp, "conllu")
    files = [folder / f"x-ud-{split}.conllu" for split in ("train", "dev", "test")]
    return lambda: CoNLLUDataModule(path=str(folder), batch_size=2), files, folder / "LICENSE.txt"


def images(tmp: Path):
    root = write_images(tmp / "pets")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}  # given: no statistics pass over the images
    make = lambda: ImageFolderDataModule(root=str(root), num_workers=0, **stats)  # noqa: E731
    return make, files, root / "cat" / "notes.txt"  # other extensions are ignored by the DataModule


CASES = {
    "cifar10-archive": cifar_archive,
    "cifar10-batches": cifar_batches,
    "charlm": charlm,
    "names": names,
    "text-file": texts_file,
    "text-folder": texts_folder,
    "translation-tsv": translation_tsv,
    "translation-folder": translation_folder,
    "translation-pair": translation_pair,
    "conll": conll,
    "conllu": conllu,
    "images": images,
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request, tmp_path, text_path):
    build = CASES[request.param]
    return build(tmp_path, text_path) if build is charlm else build(tmp_path)


def set_up(dm):
    dm.setup("fit")
    dm.setup("test")  # CIFAR-10 reads its files again for test: still listed once
    return dm


def test_data_files_are_exactly_the_files_setup_read(case):
    make, files, _ = case
    dm = make()
    assert isinstance(dm, DataFiles) and dm.data_files() == [], "nothing read before setup"
    got = set_up(dm).data_files()
    assert len(got) == len(set(got)), "each file once"
    assert sorted(got) == sorted(f.absolute() for f in files)


def test_the_digest_follows_the_bytes_not_the_files_beside_them(case):
    make, files, unrelated = case
    first = data_digest(set_up(make()).data_files())
    root = Path(first["root"])
    assert first["sha256"] == expected_digest(files, root) and first["count"] == len(files)
    assert first["files"] == {f.relative_to(root).as_posix(): sha(f) for f in files}
    assert first["bytes"] == sum(f.stat().st_size for f in files)

    unrelated.write_text("not data\n")
    assert data_digest(set_up(make()).data_files()) == first, "a file the DataModule does not read changes nothing"

    changed = files[-1]
    raw = bytearray(changed.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one byte
    changed.write_bytes(bytes(raw))
    second = data_digest(files)
    assert second["sha256"] != first["sha256"] and second["sha256"] == expected_digest(files, root)
    name = changed.relative_to(root).as_posix()
    assert {n for n in first["files"] if first["files"][n] != second["files"][n]} == {name}


def test_a_large_folder_is_counted_not_listed_and_renames_count(tmp_path):
    files = []
    for i in range(LONG + 10):
        files.append(tmp_path / f"class{i % 3}" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(os.urandom(64))
    d = data_digest(files)
    assert "files" not in d and d["count"] == LONG + 10 and d["root"] == str(tmp_path)
    assert d["sha256"] == expected_digest(files, tmp_path)
    moved = tmp_path / "class1" / files[0].name  # the same bytes under another class: other data
    files[0].rename(moved)
    assert data_digest([moved, *files[1:]])["sha256"] != d["sha256"]


def test_generated_data_reads_no_file(tmp_path):
    for dm in (AddingDataModule(length=4, train_size=8, eval_size=4), CopyMemoryDataModule(train_size=8, eval_size=4)):
        dm.setup("fit")
        assert dm.data_files() == []
        assert data_digest(dm.data_files()) == {"sha256": None, "count": 0, "files": {}}


def test_what_cannot_be_read_again_is_named_not_hashed(tmp_path):
    """A pipe (``--data.source <(cut -f2 corpus.tsv)``) was read once and is gone; so is a deleted file: hashing
    them now would give the digest of nothing."""
    pipe, kept = tmp_path / "source.fifo", tmp_path / "target.txt"
    os.mkfifo(pipe)
    kept.write_text("a dog .\n")
    d = data_digest([pipe, kept, tmp_path / "deleted.txt"])
    assert d["sha256"] is None and d["not_hashed"] == ["source.fifo", "deleted.txt"] and d["count"] == 3


def lenet_validate(tmp_path: Path, cifar_dir: Path):
    # num_images a list: hparams.yaml is read back with safe_load, which refuses tuples
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), num_images=[N_TRAIN, N_TEST], val_size=40, num_workers=0)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[RunMetadata()], limit_val_batches=1)
    trainer.validate(zoo.create_model("lenet5"), dm, verbose=False)
    return tmp_path / "csv" / "version_0" / "hparams.yaml"


def test_a_validate_run_logs_the_digest_and_only_rank_zero_hashes(tmp_path, cifar_dir, monkeypatch):
    archive = cifar_dir / "cifar10" / "cifar-10-python.tar.gz"
    data = yaml.safe_load(lenet_validate(tmp_path / "rank0", cifar_dir).read_text())["run"]["data"]
    assert data["sha256"] == sha(archive) and data["files"] == {archive.name: sha(archive)}

    hashed = []
    monkeypatch.setattr(run_metadata, "sha256_of", lambda p: hashed.append(p) or "0" * 64)
    monkeypatch.setattr(run_metadata.rank_zero_only, "rank", 1)
    lenet_validate(tmp_path / "rank1", cifar_dir)
    assert hashed == [], "a rank other than 0 read the data files again"


def test_a_run_resumed_on_changed_data_says_so(tmp_path):
    folder = write_cifar(tmp_path, as_archive=False)
    dm = lambda: CIFAR10DataModule(  # noqa: E731
        data_dir=str(tmp_path), num_images=[N_TRAIN, N_TEST], val_size=40, num_workers=0
    )
    model, ckpt = zoo.create_model("lenet5"), tmp_path / "last.ckpt"

    def fit(epochs: int, ckpt_path=None) -> dict:
        logger = CSVLogger(tmp_path, name="csv", version=epochs)
        kw = dict(max_epochs=epochs, limit_train_batches=1, limit_val_batches=1, logger=logger)
        trainer = quiet_trainer(tmp_path, callbacks=[RunMetadata()], **kw)
        trainer.fit(model, dm(), ckpt_path=ckpt_path)
        trainer.save_checkpoint(ckpt)
        return yaml.safe_load((tmp_path / "csv" / f"version_{epochs}" / "hparams.yaml").read_text())["run"]["data"]

    before = fit(1)
    assert torch.load(ckpt, weights_only=True)["callbacks"]["RunMetadata"] == {"data_sha256": before["sha256"]}
    meta = pickle.loads((folder / "batches.meta").read_bytes())
    (folder / "batches.meta").write_bytes(pickle.dumps({**meta, "note": "re-packed"}, protocol=2))  # same images
    with pytest.warns(UserWarning, match="differ from those the checkpoint was trained on"):
        after = fit(2, ckpt_path=ckpt)
    assert after["checkpoint_sha256"] == before["sha256"] != after["sha256"]
    assert torch.load(ckpt, weights_only=True)["callbacks"]["RunMetadata"] == {"data_sha256": after["sha256"]}


def test_a_train_run_holds_the_sha256_of_its_data_in_wandb(cifar_dir, tmp_path):
    args = lenet_args(cifar_dir, "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1")
    res = run_train(["fit", *args], tmp_path, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    (folder,) = (tmp_path / "runs" / "lenet5-cifar10" / "version_0" / "wandb").glob("offline-run-*")
    data = WandbRun(folder).config["run"]["data"]
    archive = cifar_dir / "cifar10" / "cifar-10-python.tar.gz"
    assert data["sha256"] == sha(archive) and data["files"] == {archive.name: sha(archive)}
    assert data["count"] == 1 and data["bytes"] == archive.stat().st_size and data["root"] == str(archive.parent)
