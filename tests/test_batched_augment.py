"""The batched augmentation on the device (``datamodules._batched``): the same geometry as torchvision's per-image
transforms, the same distributions as the per-image path, the same batch order, and exact mid-epoch resume."""

import pytest
import torch
from conftest import assert_resume_is_exact
from test_task import small_dm
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import zoo
from datamodules._augment import augmentation, seeded
from datamodules._base import EpochSampler
from datamodules._batched import BatchAugment, ResidentBatches, affine
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # so that outputs read back as pixel values / 255
NO_AUG = dict(hflip=0, vflip=0, crop_padding=0, padding_mode="constant", rotation=0, scale=None, noise_std=0, cutout=0)


def coded(n: int) -> torch.Tensor:
    """``n`` images whose channel 0 holds row + 1 and channel 1 column + 1 (0 is left for padding), channel 2 noise."""
    rows = torch.arange(1, 33, dtype=torch.uint8)
    x = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = rows[:, None]
    x[:, 1] = rows[None, :]
    x[:, 2] = torch.randint(0, 256, (n, 32, 32), generator=torch.Generator().manual_seed(0))
    return x


def geometry(out: torch.Tensor, pad: int) -> dict[str, torch.Tensor]:
    """From augmented coded images (as 0-255 values), each image's crop offsets and flips, read at the centre (which
    stays inside the image for a padding of at most 4)."""
    code = out.round().long()
    r, c = code[:, 0, 16, 16] - 1, code[:, 1, 16, 16] - 1
    vflip, hflip = code[:, 0, 17, 16] < code[:, 0, 16, 16], code[:, 1, 16, 17] < code[:, 1, 16, 16]
    return {
        "oy": r - torch.where(vflip, 15, 16) + pad,
        "ox": c - torch.where(hflip, 15, 16) + pad,
        "vflip": vflip,
        "hflip": hflip,
    }


def per_image(x: torch.Tensor, **aug) -> torch.Tensor:
    transform = augmentation(**{**NO_AUG, **aug}, size=32, mean=PLAIN["mean"], std=PLAIN["std"])
    return torch.stack([seeded(transform, im, i) for i, im in enumerate(x)]) * 255


def batched(x: torch.Tensor, seed: int = 0, **aug) -> torch.Tensor:
    return BatchAugment(**PLAIN, **aug)(x, torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "symmetric"])
def test_crop_and_flips_are_torchvisions_pad_crop_and_flip(mode):
    """Every output equals torchvision's pad (in each padding mode), crop at the image's offsets, then flips."""
    x = coded(64)
    out = batched(x, crop_padding=4, padding_mode=mode, hflip=0.5, vflip=0.5)
    geo = geometry(out, 4)
    assert geo["hflip"].any() and not geo["hflip"].all() and len(set(geo["oy"].tolist())) > 4
    for i in range(len(x)):
        want = TF.pad(x[i], [4], padding_mode=mode)[:, geo["oy"][i] : geo["oy"][i] + 32, geo["ox"][i] :][:, :, :32]
        want = want.flip(-1) if geo["hflip"][i] else want
        want = want.flip(-2) if geo["vflip"][i] else want
        assert torch.equal(out[i].round().to(torch.uint8), want), i


@pytest.mark.parametrize("degrees,zoom", [(90.0, 1.0), (30.0, 1.0), (-20.0, 0.8), (10.0, 1.2), (0.0, 1.5)])
def test_affine_is_torchvisions(degrees, zoom):
    x = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8)
    want = TF.affine(x[0], angle=degrees, translate=[0, 0], scale=zoom, shear=[0.0, 0.0])  # nearest by default
    got = affine(x.float(), torch.tensor([degrees]), torch.tensor([zoom]))[0]
    assert torch.equal(got.round().to(torch.uint8), want)


def histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    return torch.bincount(values, minlength=bins).float() / len(values)


def test_offsets_and_flips_have_the_per_image_distribution():
    n = 6000
    x = coded(n)
    aug = dict(crop_padding=4, hflip=0.5, vflip=0.2)
    fast, slow = geometry(batched(x, **aug), 4), geometry(per_image(x, **aug), 4)
    for geo in (fast, slow):
        for axis in ("oy", "ox"):
            h = histogram(geo[axis], 9)
            assert h.min() > 0.8 / 9 and h.max() < 1.2 / 9, (axis, h)  # uniform over 0..8
        assert abs(geo["hflip"].float().mean() - 0.5) < 0.03 and abs(geo["vflip"].float().mean() - 0.2) < 0.03
    for axis in ("oy", "ox"):  # total variation distance between the two paths' offsets
        assert (histogram(fast[axis], 9) - histogram(slow[axis], 9)).abs().sum() / 2 < 0.04


def cutout_boxes(out: torch.Tensor) -> torch.Tensor:
    """(N, 4) first and last zeroed row and column of each image (the images were constant and nonzero)."""
    zero = out[:, 0] == 0
    rows, cols = zero.any(2), zero.any(1)
    ar = torch.arange(32)
    first = lambda m: torch.where(m, ar, 99).amin(1)  # noqa: E731
    last = lambda m: torch.where(m, ar, -1).amax(1)  # noqa: E731
    return torch.stack([first(rows), last(rows), first(cols), last(cols)], 1)


def test_cutout_squares_have_the_per_image_distribution():
    """Cutout runs after normalisation: the square is 0 (the mean colour), centred uniformly, clipped at the border."""
    n = 6000
    x = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)
    fast, slow = cutout_boxes(batched(x, cutout=8)), cutout_boxes(per_image(x, cutout=8))
    for boxes in (fast, slow):
        assert (boxes[:, 1] - boxes[:, 0] + 1).max() == 8 and (boxes[:, 1] - boxes[:, 0] + 1).min() == 4
        assert (boxes[:, 0] == 0).float().mean() == pytest.approx(5 / 32, abs=0.02)  # centres 0..4 reach row 0
    for k in range(4):
        assert (histogram(fast[:, k], 32) - histogram(slow[:, k], 32)).abs().sum() / 2 < 0.06


def test_noise_has_the_per_image_spread():
    x = torch.full((2000, 3, 32, 32), 128, dtype=torch.uint8)
    for out in (batched(x, noise_std=0.05), per_image(x, noise_std=0.05)):
        noise = out / 255 - 128 / 255
        assert noise.mean().abs() < 1e-3 and noise.std().item() == pytest.approx(0.05, rel=0.02)


def test_rotation_and_zoom_are_drawn_uniformly(monkeypatch):
    seen = {}

    def record(x, degrees, zoom):
        seen["degrees"], seen["zoom"] = degrees, zoom
        return x

    monkeypatch.setattr("datamodules._batched.affine", record)
    aug = BatchAugment(**PLAIN, rotation=15, scale=(0.9, 1.1))
    aug(torch.zeros(20000, 3, 2, 2, dtype=torch.uint8), torch.Generator().manual_seed(0))
    d, z = seen["degrees"], seen["zoom"]
    assert -15 <= d.min() < -14.9 and 14.9 < d.max() <= 15 and d.mean().abs() < 0.3
    assert (
        0.9 <= z.min() < 0.901 and 1.099 < z.max() <= 1.1 and z.std().item() == pytest.approx(0.2 / 12**0.5, rel=0.03)
    )


def loader(x, y, world=1, rank=0, **aug):
    transform = BatchAugment(mean=CIFAR10_MEAN, std=CIFAR10_STD, **aug)
    return ResidentBatches(x, y, transform, 16, shuffle=True, seed=3, world=world, rank=rank)


def test_batches_follow_the_per_image_paths_permutation_and_values():
    """Without augmentation each batch holds the images of the per-image path's batch, normalised alike."""
    x, y = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8), torch.arange(100)
    fast = loader(x, y)
    fast.sampler.set_epoch(2)
    slow = EpochSampler(range(100), seed=3)
    slow.set_epoch(2)
    order = [i for i, _ in slow]
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    batches = list(fast)
    assert len(batches) == len(fast) == 6  # 100 images: 6 full batches of 16, the ragged one dropped
    for b, (xb, yb) in enumerate(batches):
        assert yb.tolist() == order[16 * b : 16 * (b + 1)]
        torch.testing.assert_close(xb, torch.stack([norm(x[i]) for i in yb]), atol=1e-6, rtol=0)


def test_draws_are_seeded_per_epoch_and_batch_and_resume_mid_epoch():
    x, y = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8), torch.arange(100)
    aug = dict(crop_padding=4, hflip=0.5, cutout=8, noise_std=0.1)
    first = list(loader(x, y, **aug))
    again = loader(x, y, **aug)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    other = loader(x, y, **aug)
    other.sampler.set_epoch(1)
    assert not torch.equal(next(iter(other))[0], first[0][0])
    stopped = loader(x, y, **aug)
    it = iter(stopped)
    next(it), next(it)
    state = stopped.state_dict()
    assert state == {"epoch": 0, "batches": 2}
    resumed = loader(x, y, **aug)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(first[2:], rest))
    assert len(list(resumed)) == 6  # the next epoch is whole


def test_processes_share_the_training_split_and_evaluate_every_example_once():
    x, y = torch.zeros(50, 3, 32, 32, dtype=torch.uint8), torch.arange(50)
    shares = [torch.cat([yb for _, yb in loader(x, y, world=2, rank=r)]) for r in (0, 1)]
    assert not set(shares[0].tolist()) & set(shares[1].tolist()) and len(shares[0]) == len(shares[1]) == 16
    evals = [ResidentBatches(x, y, BatchAugment(**PLAIN), 8, shuffle=False, world=2, rank=r) for r in (0, 1)]
    seen = sorted(torch.cat([yb for ev in evals for _, yb in ev]).tolist())
    assert seen == list(range(50))


@pytest.mark.parametrize("ddp", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["one-process", "ddp"])
def test_resume_mid_epoch_is_exact_through_the_trainer(cifar_dir, tmp_path, ddp):
    """As the per-image path's test (test_task.py): stopped after 3 batches of the second epoch and resumed, the
    run ends with the weights of an unbroken one."""
    kw = dict(strategy="ddp_spawn", accelerator="cpu", devices=2) if ddp else {}
    aug = dict(crop_padding=2, hflip=0.5, cutout=4, noise_std=0.05, batch_augment=True)
    make_dm = lambda: small_dm(cifar_dir, batch_size=8, **aug)  # noqa: E731
    make_model = lambda: zoo.create_model("alexnet", num_classes=10, lr=0.02)  # noqa: E731
    ckpt = assert_resume_is_exact(tmp_path, make_model, make_dm, **kw)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3}]
