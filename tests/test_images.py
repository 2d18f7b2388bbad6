import importlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGE_CLASSES as CLASSES
from conftest import write_images
from PIL import Image
from torchvision.transforms import v2

from datamodules import DATAMODULES, DatasetError
from datamodules.images import ImageFolderDataModule, split_per_class

FAST = dict(num_workers=0, batch_size=4, eval_batch_size=8, image_size=8)
NO_AUG = dict(hflip=0.0, crop_padding=0)


def add_junk(folder: Path) -> None:
    (folder / "cat" / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    (folder / "cat" / "notes.txt").write_text("taken in 2019")
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "dog" / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "dog" / "._dog1.png").write_bytes(b"AppleDouble")  # macOS resource fork: hidden, not an image
    (folder / "__MACOSX" / "cat").mkdir(parents=True)  # zip leftovers: not a class
    (folder / "__MACOSX" / "cat" / "._cat0.jpg").write_bytes(b"AppleDouble")
    (folder / "owl" / ".ipynb_checkpoints").mkdir()  # Jupyter's copies: not extra images
    Image.new("RGB", (9, 9)).save(folder / "owl" / ".ipynb_checkpoints" / "owl0-checkpoint.png")


def dm_for(root: Path, **kw) -> ImageFolderDataModule:
    return ImageFolderDataModule(root=str(root), **{**FAST, **kw})


def names(samples) -> set[str]:
    return {p.name for p, _ in samples}


@pytest.fixture
def pool(tmp_path) -> Path:
    return write_images(tmp_path / "photos")


# -- layouts and splits ---------------------------------------------------------------------------------------
def test_pool_split_is_stratified_disjoint_complete(pool):
    dm = dm_for(pool)
    assert dm.num_classes == 3 and dm.classes == CLASSES  # before setup: folder listing only
    dm.setup()
    tr, va, te = dm.train_set.samples, dm.val_set.samples, dm.test_set.samples
    assert (len(tr), len(va), len(te)) == (18, 3, 3)
    for split in (tr, va, te):
        counts = torch.bincount(torch.tensor([y for _, y in split]), minlength=3)
        assert counts.tolist() == [len(split) // 3] * 3  # same share of every class
    assert not (names(tr) & names(va) or names(tr) & names(te) or names(va) & names(te))
    assert names(tr) | names(va) | names(te) == {p.name for p in pool.rglob("*.*")}
    assert all(p.parent.name == CLASSES[y] for p, y in tr + va + te)


def test_split_is_deterministic_by_seed(pool):
    a, b, c = dm_for(pool), dm_for(pool), dm_for(pool, split_seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.val_set.samples == b.val_set.samples and a.train_set.samples == b.train_set.samples
    assert a.val_set.samples != c.val_set.samples


def test_split_layout_uses_given_splits_and_carves_test(tmp_path):
    write_images(tmp_path / "train", seed=0)
    write_images(tmp_path / "val", n=2, seed=1)
    dm = dm_for(tmp_path, val_fraction=0.3, test_fraction=0.25)  # val_fraction unused: val/ exists
    dm.setup()
    assert dm.classes == CLASSES
    assert {p.parent.parent.name for p, _ in dm.val_set.samples} == {"val"} and len(dm.val_set) == 6
    assert len(dm.test_set) == 6 and len(dm.train_set) == 18  # round(8 * 0.25) = 2 per class from train/
    assert all(p.parent.parent.name == "train" for p, _ in dm.test_set.samples + dm.train_set.samples)
    assert not names(dm.train_set.samples) & names(dm.test_set.samples)


def test_split_layout_with_all_three_splits(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_images(tmp_path / split, n=n)
    dm = dm_for(tmp_path)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 6, 9)


def test_split_layout_class_mismatch_names_classes(tmp_path):
    write_images(tmp_path / "train")
    write_images(tmp_path / "test", classes=["cat", "dog", "emu"], n=1)
    with pytest.raises(DatasetError, match=r"extra \['emu'\], missing \['owl'\]"):
        dm_for(tmp_path).setup()


def test_split_layout_with_stray_folder(tmp_path):
    write_images(tmp_path / "train")
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetError, match="train/ next to cat/"):
        dm_for(tmp_path).setup()


def test_small_class_stays_in_train_with_warning(tmp_path):
    write_images(tmp_path, classes=["cat", "dog"])
    write_images(tmp_path, classes=["emu"], n=1)
    dm = dm_for(tmp_path)
    with pytest.warns(UserWarning, match="held-out split.*: not in val: emu; not in test: emu"):
        dm.setup()
    assert [y for _, y in dm.train_set.samples].count(2) == 1
    assert 2 not in {y for _, y in dm.val_set.samples + dm.test_set.samples}


@pytest.mark.parametrize(
    "n,fractions,sizes",
    [(8, (0.1, 0.1), (6, 1, 1)), (2, (0.3, 0.3), (1, 1, 0)), (1, (0.4, 0.4), (1, 0, 0)), (10, (0.0, 0.5), (5, 0, 5))],
)
def test_stratified_split_keeps_one_train_image(n, fractions, sizes):
    files = [Path(f"{i}.png") for i in range(n)]
    out = split_per_class([files], dict(zip(("val", "test"), fractions)), seed=0)
    assert (len(out["train"]), len(out["val"]), len(out["test"])) == sizes
    assert sorted(p for split in out.values() for p, _ in split) == files


def test_zero_fraction_leaves_split_empty(pool):
    dm = dm_for(pool, test_fraction=0.0)
    dm.setup()
    assert len(dm.test_set) == 0 and len(dm.train_set) == 21


# -- batches and decoding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "gray"])
def test_batches_have_model_shape(pool, channels):
    dm = dm_for(pool, channels=channels, image_size=12)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, channels, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (3, channels, 12, 12)


def test_grayscale_file_gives_three_equal_channels(pool):
    dm = dm_for(pool)
    dm.setup("fit")
    i = next(i for i, (p, _) in enumerate(dm.train_set.samples) if Image.open(p).mode == "L")
    img = dm.train_set.load(i)
    assert img.shape[0] == 3 and img.dtype == torch.uint8
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    write_images(tmp_path, n=2)
    Image.fromarray(np.full((9, 9), 30000, dtype=np.uint16)).save(tmp_path / "cat" / "deep.png")
    dm = dm_for(tmp_path, val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    i = next(i for i, (p, _) in enumerate(dm.train_set.samples) if p.name == "deep.png")
    assert dm.train_set.load(i).unique().tolist() == [30000 // 257]


def test_exif_orientation_is_applied(tmp_path):
    write_images(tmp_path, n=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored 10x20 (w x h) picture is shown 20x10
    Image.new("RGB", (10, 20), (200, 0, 0)).save(tmp_path / "dog" / "phone.jpg", exif=exif)
    dm = dm_for(tmp_path, val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    i = next(i for i, (p, _) in enumerate(dm.train_set.samples) if p.name == "phone.jpg")
    assert dm.train_set.load(i).shape == (3, 10, 20)  # (C, H, W)


# -- bad files ------------------------------------------------------------------------------------------------
def test_bad_file_skipped_with_one_warning(pool):
    add_junk(pool)
    dm = dm_for(pool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "skipped 1 of 25 image files" in msgs[0] and "bad.jpg" in msgs[0], msgs
    everything = dm.train_set.samples + dm.val_set.samples + dm.test_set.samples
    assert len(everything) == 24 and "bad.jpg" not in names(everything) and "notes.txt" not in names(everything)


def test_bad_file_error_mode_names_it(pool):
    add_junk(pool)
    with pytest.raises(DatasetError, match=r"1 of 25 files .* not readable images: cat/bad\.jpg"):
        dm_for(pool, bad_files="error").setup()


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_truncated_jpeg_that_passes_verify(tmp_path, policy):
    write_images(tmp_path, n=2)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cat" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # an interrupted copy
    dm = dm_for(tmp_path, val_fraction=0.0, test_fraction=0.0, bad_files=policy, mean=[0.5] * 3, std=[0.2] * 3)
    dm.setup("fit")  # Image.verify does not decode pixels: the file is only found when it is loaded
    i = next(i for i, (p, _) in enumerate(dm.train_set.samples) if p.name == "cut.jpg")
    if policy == "error":
        with pytest.raises(DatasetError, match="cut.jpg .*cannot be decoded.*bad_files skip"):
            dm.train_set[i]
    else:
        with pytest.warns(UserWarning, match="cut.jpg .*cannot be decoded.*next image"):
            x, y = dm.train_set[i]
        assert x.shape == (3, 8, 8) and y == dm.train_set.samples[(i + 1) % 6][1]


def test_class_of_only_bad_files_is_an_error(pool):
    (pool / "emu").mkdir()
    (pool / "emu" / "a.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped"), pytest.raises(DatasetError, match="no readable images.*emu"):
        dm_for(pool).setup()


# -- bad input ------------------------------------------------------------------------------------------------
def test_missing_root_says_path_and_layout(tmp_path):
    dm = dm_for(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"nope does not exist.*root/<class>/\*\.jpg"):
        dm.setup()
    with pytest.raises(DatasetError, match="nope does not exist"):
        dm.num_classes  # noqa: B018


def test_root_without_class_folders_says_what_it_holds(tmp_path):
    Image.new("RGB", (9, 9)).save(tmp_path / "a.png")
    (tmp_path / "b.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no class folders, only 2 files \(a\.png, b\.txt\)"):
        dm_for(tmp_path).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no class folders, only nothing"):
        dm_for(empty).setup()


def test_class_folder_without_images(pool):
    (pool / "emu").mkdir()
    (pool / "emu" / "notes.txt").write_text("x")
    (pool / "fox").mkdir()
    with pytest.raises(DatasetError, match=r"without images .*emu/ \(1 other files\), fox/ \(empty\)"):
        dm_for(pool).setup()


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(val_fraction=1.0), r"val_fraction .* \[0, 1\)"),
        (dict(test_fraction=-0.1), r"test_fraction .* \[0, 1\)"),
        (dict(val_fraction=0.5, test_fraction=0.5), "must be < 1"),
        (dict(image_size=4), ">= 8"),
        (dict(channels=2), "1 .* or 3"),
        (dict(bad_files="ignore"), "'skip' or 'error'"),
        (dict(mean=[0.5, 0.5, 0.5]), "both mean and std"),
        (dict(mean=[0.5], std=[0.2]), "one value per channel"),
        (dict(hflip=2.0), "probability"),
        (dict(padding_mode="wrap"), "padding_mode"),
    ],
)
def test_bad_config_values(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        dm_for(tmp_path, **kw)


# -- normalisation and augmentation ---------------------------------------------------------------------------
def test_mean_std_computed_from_train_split(pool, caplog):
    dm = dm_for(pool)
    with caplog.at_level("INFO"):
        dm.setup("fit")
    resize = v2.Compose(dm.eval_transform().transforms[:2])  # what the model sees, before normalisation
    raw = torch.stack([resize(dm.train_set.load(i)) for i in range(18)]).double() / 255
    assert torch.allclose(torch.tensor(dm.hparams.mean, dtype=torch.float64), raw.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(torch.tensor(dm.hparams.std, dtype=torch.float64), raw.std((0, 2, 3)), atol=1e-3)
    assert "mean [" in caplog.text
    x, _ = next(iter(dm.val_dataloader()))
    assert abs(x.mean().item()) < 1.5


def test_given_mean_std_are_used_as_is(pool, monkeypatch):
    monkeypatch.setattr(ImageFolderDataModule, "_compute_stats", lambda self: pytest.fail("stats were computed"))
    dm = dm_for(pool, channels=1, mean=[0.5], std=[0.25])
    dm.setup("fit")
    norm = dm.eval_transform().transforms[-1]
    assert list(norm.mean) == [0.5] and list(norm.std) == [0.25]
    img = dm.val_set.load(0)
    ref = (v2.Compose(dm.eval_transform().transforms[:2])(img) / 255 - 0.5) / 0.25
    assert torch.allclose(dm.val_set[0][0], ref, atol=1e-5)


@pytest.mark.parametrize(
    "aug",
    [dict(hflip=1.0), dict(vflip=1.0), dict(crop_padding=2), dict(rotation=30.0), dict(noise_std=0.1), dict(cutout=4)],
    ids=["hflip", "vflip", "crop", "rotation", "noise", "cutout"],
)
def test_augmentation_changes_train_not_eval(pool, aug):
    torch.manual_seed(0)
    norm = dict(mean=[0.5] * 3, std=[0.2] * 3)  # given: no stats pass
    plain, augmented = dm_for(pool, **NO_AUG, **norm), dm_for(pool, **{**NO_AUG, **aug}, **norm)
    for dm in (plain, augmented):
        dm.setup()
    idx = range(6)
    train = torch.stack([augmented.train_set[i][0] for i in idx])
    assert not torch.allclose(train, torch.stack([plain.train_set[i][0] for i in idx]))
    for split in ("val_set", "test_set"):
        a, b = getattr(plain, split), getattr(augmented, split)
        assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


def test_hflip_is_exact_mirror_of_eval(pool):
    dm = dm_for(pool, **{**NO_AUG, "hflip": 1.0}, mean=[0.5] * 3, std=[0.2] * 3)
    dm.setup("fit")
    img = dm.train_set.load(0)
    assert torch.equal(dm.train_transform()(img), dm.eval_transform()(img).flip(-1))


# -- wiring ---------------------------------------------------------------------------------------------------
def test_registered_as_images():
    module, _, cls = DATAMODULES["images"].rpartition(".")
    assert getattr(importlib.import_module(module), cls) is ImageFolderDataModule


def test_hparams_are_plain_values(pool):
    dm = dm_for(pool)
    dm.setup("fit")
    assert all(isinstance(v, (str, int, float, list, tuple, type(None))) for v in dm.hparams.values())
    assert len(dm.hparams.mean) == 3
