import gzip
import io
import os
import pickle
import shlex
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, write_cifar

from datamodules import DatasetError, cifar10_files
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10DataModule, Cutout, load_cifar10

SMALL = dict(num_images=(N_TRAIN, N_TEST), val_size=40, num_workers=0, batch_size=16)
NO_AUG = dict(hflip=0.0, crop_padding=0)


def dm_for(data_dir, **kw):
    return CIFAR10DataModule(data_dir=str(data_dir), **{**SMALL, **kw})


@pytest.mark.parametrize("as_archive", [True, False], ids=["tar.gz", "folder"])
def test_reads_both_layouts(tmp_path, as_archive):
    path = write_cifar(tmp_path, as_archive=as_archive)
    data = load_cifar10(path, (N_TRAIN, N_TEST))
    x, y = data["train"]
    assert x.shape == (N_TRAIN, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (N_TRAIN,)
    assert data["test"][0].shape == (N_TEST, 3, 32, 32)
    assert data["classes"][0] == "airplane"


def test_channel_layout_is_rgb_planes(tmp_path):
    path = write_cifar(tmp_path, as_archive=False)
    raw = pickle.loads((path / "data_batch_1").read_bytes(), encoding="latin1")["data"]
    x, _ = load_cifar10(path, (N_TRAIN, N_TEST))["train"]
    assert torch.equal(x[0, 1].flatten(), torch.from_numpy(raw[0, 1024:2048]))  # green plane, row-major


def test_split_is_deterministic_and_disjoint(cifar_dir):
    a, b, c = dm_for(cifar_dir), dm_for(cifar_dir), dm_for(cifar_dir, split_seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    assert len(a.train_set) == N_TRAIN - 40 and len(a.val_set) == 40
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    train_rows = {bytes(r.flatten().numpy()) for r in a.train_set.images}
    assert not any(bytes(r.flatten().numpy()) in train_rows for r in a.val_set.images)
    assert a.test_set is None  # the test split is loaded only for trainer.test


def test_test_split_only_on_test_stage(cifar_dir):
    dm = dm_for(cifar_dir)
    dm.setup("test")
    assert dm.train_set is None and len(dm.test_set) == N_TEST


def test_no_augmentation_equals_eval_transform(cifar_dir):
    dm = dm_for(cifar_dir, **NO_AUG)
    dm.setup("fit")
    img = dm.train_set.images[0]
    assert torch.equal(dm.train_transform()(img), dm.eval_transform()(img))


@pytest.mark.parametrize(
    "aug",
    [
        dict(hflip=1.0),
        dict(vflip=1.0),
        dict(crop_padding=4),
        dict(rotation=30.0),
        dict(scale=(0.5, 0.6)),
        dict(noise_std=0.1),
        dict(cutout=8),
    ],
    ids=["hflip", "vflip", "crop", "rotation", "scale", "noise", "cutout"],
)
def test_each_augmentation_changes_images(cifar_dir, aug):
    torch.manual_seed(0)
    dm = dm_for(cifar_dir, **{**NO_AUG, **aug})
    dm.setup("fit")
    imgs = dm.train_set.images[:8]
    out = torch.stack([dm.train_transform()(i) for i in imgs])
    ref = torch.stack([dm.eval_transform()(i) for i in imgs])
    assert out.shape == ref.shape == (8, 3, 32, 32)
    assert not torch.allclose(out, ref)


def test_hflip_is_exact_mirror(cifar_dir):
    dm = dm_for(cifar_dir, **{**NO_AUG, "hflip": 1.0})
    dm.setup("fit")
    img = dm.train_set.images[0]
    assert torch.equal(dm.train_transform()(img), dm.eval_transform()(img).flip(-1))


def test_cutout_zeroes_one_clipped_square():
    torch.manual_seed(0)
    for _ in range(20):
        out = Cutout(8)(torch.ones(3, 32, 32))
        zero_rows = (out[0] == 0).any(1).sum().item()
        zero_cols = (out[0] == 0).any(0).sum().item()
        assert 4 <= zero_rows <= 8 and 4 <= zero_cols <= 8
        assert (out == 0).sum() == 3 * zero_rows * zero_cols


def test_loader_batches(cifar_dir):
    dm = dm_for(cifar_dir)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 3


@pytest.mark.parametrize("pin", [False, True])
def test_pin_memory_reaches_every_loader(cifar_dir, pin):
    dm = dm_for(cifar_dir, pin_memory=pin)
    dm.setup()
    assert [dl.pin_memory for dl in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())] == [pin] * 3


# -- bad input ----------------------------------------------------------------------------------------------
def test_missing_offline_without_download(tmp_path):
    dm = dm_for(tmp_path / "empty", download=False)
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*empty/cifar10"):
        dm.prepare_data()


def test_missing_and_unreachable_network(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10_files, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # refused at once
    dm = dm_for(tmp_path / "none")
    with pytest.raises(DatasetError, match="could not be downloaded.*Put cifar-10-python.tar.gz"):
        dm.prepare_data()
    assert not list((tmp_path / "none").rglob("*.part")), "a failed download must leave nothing behind"


def test_truncated_archive(tmp_path):
    path = write_cifar(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated.*Delete it"):
        load_cifar10(path, (N_TRAIN, N_TEST))


def test_not_gzip(tmp_path):
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_cifar10(path)


def test_missing_batch_in_folder(tmp_path):
    folder = write_cifar(tmp_path, as_archive=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        load_cifar10(folder, (N_TRAIN, N_TEST))


def test_wrong_counts_and_bad_rows(tmp_path):
    folder = write_cifar(tmp_path, as_archive=False)
    with pytest.raises(DatasetError, match="holds 200 train images, expected 50000"):
        load_cifar10(folder)
    d = pickle.loads((folder / "data_batch_2").read_bytes(), encoding="latin1")
    d["data"] = d["data"][:, :100]
    (folder / "data_batch_2").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DatasetError, match="3,072 bytes"):
        load_cifar10(folder, (N_TRAIN, N_TEST))


def test_labels_out_of_range(tmp_path):
    folder = write_cifar(tmp_path, as_archive=False)
    d = pickle.loads((folder / "test_batch").read_bytes(), encoding="latin1")
    d["labels"][0] = 10
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DatasetError, match="outside 0-9"):
        load_cifar10(folder, (N_TRAIN, N_TEST))


class RunsCode:
    """Pickles as a call of ``os.system``: unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def replace_member(path: Path, name: str, raw: bytes) -> None:
    """Put ``raw`` in place of member ``name`` of the archive or folder at ``path``."""
    if path.is_dir():
        (path / name).write_bytes(raw)
        return
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    members[f"cifar-10-batches-py/{name}"] = raw
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "member,as_archive", [("batches.meta", True), ("data_batch_1", False)], ids=["meta-in-archive", "batch-in-folder"]
)
def test_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, member, as_archive):
    path = write_cifar(tmp_path, as_archive=as_archive)
    marker = tmp_path / "code-ran"
    replace_member(path, member, pickle.dumps({"label_names": [RunsCode(marker)] * 10, "labels": [0]}, protocol=2))
    refused = f"{member} in {path} asks to call {os.system.__module__}.system, which no CIFAR-10 batch holds"
    with pytest.raises(DatasetError, match=refused + r".*refused, nothing was run.*may be malicious"):
        load_cifar10(path, (N_TRAIN, N_TEST))
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_batches_pickled_at_any_protocol_with_numpy_labels_load(tmp_path, protocol):
    folder = write_cifar(tmp_path, as_archive=False)
    want = load_cifar10(folder, (N_TRAIN, N_TEST))
    for name in ["batches.meta", "test_batch", *cifar10_files.TRAIN_BATCHES]:
        d = pickle.loads((folder / name).read_bytes(), encoding="latin1")
        if "labels" in d:  # numpy ints, as a re-packer writing list(labels_array) would leave them
            d["labels"] = list(np.asarray(d["labels"], dtype=np.int64))
            d["empty"] = b""  # how protocol 2 writes empty bytes: a call of bytes()
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    got = load_cifar10(folder, (N_TRAIN, N_TEST))
    assert torch.equal(got["train"][0], want["train"][0]) and torch.equal(got["test"][1], want["test"][1])


def test_batch_that_is_not_a_dict(tmp_path):
    folder = write_cifar(tmp_path, as_archive=False)
    (folder / "batches.meta").write_bytes(pickle.dumps(list(range(10)), protocol=2))
    with pytest.raises(DatasetError, match="batches.meta in .* holds a list, not a CIFAR-10 batch"):
        load_cifar10(folder, (N_TRAIN, N_TEST))


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(hflip=2.0), "probability"),
        (dict(padding_mode="wrap"), "padding_mode"),
        (dict(scale=(1.2, 0.8)), "scale"),
        (dict(val_size=0), "val_size"),
        (dict(cutout=-1), ">= 0"),
    ],
)
def test_bad_config_values(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        dm_for(tmp_path, **kw)


# -- the real archive (shared/data/cifar10: lossless, rebuilt, other md5s) --------------------------------------
def test_real_archive_structure(real_data_dir):
    path = cifar10_files.find_cifar10(real_data_dir)
    data = load_cifar10(path)
    x, y = data["train"]
    assert x.shape == (50_000, 3, 32, 32) and data["test"][0].shape == (10_000, 3, 32, 32)
    assert torch.bincount(y).tolist() == [5000] * 10
    mean = x.float().div(255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=1e-3)
