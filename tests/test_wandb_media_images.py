"""The image family's W&B pictures, read back from an offline train.py run (its ``run-*.wandb`` records, the files
under ``files/media/`` and the run-table artifacts W&B staged): sample predictions in pixels, a confusion matrix
and per-class accuracy over the whole validation split, Grad-CAM panels; their schedule and off switch; Grad-CAM
itself on a net whose answer is known; ``zoo predict --explain``."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import CLASSES, lenet_args, run_train
from PIL import Image
from wandb_records import WandbRun

import zoo
from zoo.callbacks.media.image import ImageMedia
from zoo.cli.main import main
from zoo.tasks.explain import gradcam, panel, target_layer, to_pixels

VAL = 40  # the fixture's validation split (conftest FIXTURE_ARGS --data.val_size), two batches of 20
TRAIN_BATCHES = 2


def train(cifar_dir: Path, cwd: Path, *args: str) -> WandbRun:
    limits = ["--trainer.limit_train_batches", str(TRAIN_BATCHES), "--trainer.limit_val_batches", "2"]
    res = run_train(["fit", *lenet_args(cifar_dir, *limits, *args)], cwd, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    (folder,) = (cwd / "runs" / "lenet5-cifar10" / "version_0" / "wandb").glob("offline-run-*")
    return WandbRun(folder)


def steps_of(run: WandbRun, key: str) -> list[int]:
    return [row["trainer/global_step"] for row in run.history if any(k.startswith(key + "/") for k in row)]


def test_an_image_run_logs_predictions_confusion_per_class_and_gradcam(cifar_dir, tmp_path):
    media = ["--wandb.media_every_n_epochs", "2", "--wandb.media_samples", "3"]
    run = train(cifar_dir, tmp_path, "--trainer.max_epochs", "3", *media)
    keys = ("media/predictions", "media/confusion_matrix_table", "media/per_class_accuracy_table", "media/gradcam")
    val_steps = [row["trainer/global_step"] for row in run.history if "val_acc" in row]
    assert len(val_steps) == 3
    for key in keys:  # every 2nd epoch and the last: epochs 2 and 3, not 1, at the step of their val_acc
        assert steps_of(run, key) == val_steps[1:], key

    table = run.table("media/predictions")
    assert table["columns"] == ["image", "true", "predicted", "confidence", "correct"]
    assert len(table["data"]) == 3, "at most --wandb.media_samples rows"
    for image, true, predicted, confidence, correct in table["data"]:
        assert true in CLASSES and predicted in CLASSES and 0 < confidence <= 1 and correct == (true == predicted)
        pixels = np.asarray(Image.open(image["local_path"]))
        assert image["format"] == "png" and pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        # the fixture's red channel is noise // 4 + 20 * label: back in pixels (mean/std undone) it lies there again
        low = 20 * CLASSES.index(true)
        assert low - 1 <= pixels[..., 0].min() and pixels[..., 0].max() <= low + 64, "un-normalised to pixels"

    files = run.folder / "files"
    matrix = json.loads((files / run.media("media/confusion_matrix_table")[-1]["path"]).read_text())
    assert matrix["columns"] == ["Actual", "Predicted", "nPredictions"] and len(matrix["data"]) == 100
    counts = np.zeros((10, 10))
    for true, predicted, n in matrix["data"]:
        counts[CLASSES.index(true), CLASSES.index(predicted)] = n
    assert counts.sum() == VAL, "the whole validation split, not the samples"
    val_acc = next(row["val_acc"] for row in reversed(run.history) if "val_acc" in row)
    assert np.trace(counts) / VAL == pytest.approx(val_acc, abs=1e-6), "the task's own predictions"

    bar = json.loads((files / run.media("media/per_class_accuracy_table")[-1]["path"]).read_text())
    assert bar["columns"] == ["class", "accuracy"]
    shown = {c: a for c, a in bar["data"]}
    assert set(shown) == {CLASSES[c] for c in range(10) if counts[c].sum()}, "classes without images left out"
    for name, accuracy in shown.items():
        c = CLASSES.index(name)
        assert accuracy == pytest.approx(counts[c, c] / counts[c].sum())

    cam = run.media("media/gradcam")[-1]
    assert cam["count"] == 3 and (cam["width"], cam["height"]) == ((2 * 32 + 1) * 4, 32 * 4)
    for name in cam["filenames"]:
        with Image.open(files / name) as im:
            assert im.format == "PNG" and im.size == (cam["width"], cam["height"])
    assert all(c.split(" -> ")[0] in CLASSES for c in cam["captions"])


@pytest.mark.slow
def test_media_false_logs_no_pictures(cifar_dir, tmp_path):
    run = train(cifar_dir, tmp_path, "--trainer.max_epochs", "1", "--wandb.media", "false")
    assert run.curve("val_acc"), "the run itself is logged"
    assert not [k for row in run.history for k in row if k.startswith("media/")]
    assert not (run.folder / "files" / "media").exists()


# -- Grad-CAM ------------------------------------------------------------------------------------------------------
class TwoColours(nn.Module):
    """Class 0 is "how red", class 1 "how green": a 1x1 convolution copies the red and green planes into two maps
    (stride 2: a coarser map than the image, as in real nets), each class the global mean of its own map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, stride=2, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = self.features.weight[1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).relu().mean((2, 3))  # (B, 2)


def test_gradcam_points_at_the_evidence_for_each_class():
    x = torch.zeros(2, 3, 16, 16)
    x[:, 0, :8, :8] = 1.0  # red in the top-left quadrant
    x[:, 1, 8:, 8:] = 0.5  # green in the bottom-right one
    net = TwoColours().train()
    with torch.inference_mode():  # as in a validation loop
        heat, probs = gradcam(net, x, target=torch.tensor([0, 1]))
    assert heat.shape == (2, 16, 16) and probs.shape == (2, 2) and heat.min() >= 0 and heat.max() == 1
    for cls, (rows, cols) in enumerate([(slice(0, 8), slice(0, 8)), (slice(8, 16), slice(8, 16))]):
        inside = heat[cls, rows, cols].sum() / heat[cls].sum()
        assert inside > 0.9, f"class {cls}: {inside:.2f} of the heat in its quadrant"
    assert net.training and net.features.weight.grad is None, "mode restored, no gradient left on the net"
    assert probs.argmax(-1).tolist() == [0, 0], "red (1.0) outweighs green (0.5): probabilities of the net"


def test_gradcam_of_a_bfloat16_net_in_float32():
    net = TwoColours().to(torch.bfloat16)
    heat, _ = gradcam(net, torch.rand(1, 3, 8, 8, dtype=torch.bfloat16))
    assert heat.dtype == torch.float32 and next(net.parameters()).dtype == torch.bfloat16, "a float32 copy"


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "vgg11_bn", "densenet_bc_100_12"], ids=str)
def test_the_explained_layer_is_the_last_spatial_map(arch):
    net = zoo.create_model(arch).net.eval()
    x = torch.randn(2, 3, 32, 32)
    layer = net.get_submodule(target_layer(net, x))
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    heat, _ = gradcam(net, x)
    handle.remove()
    assert min(seen[-1][-2:]) > 1 and heat.shape == (2, 32, 32) and 0 <= heat.min() and heat.max() <= 1
    if arch != "lenet5":  # the map the classifier pools (LeNet flattens its 16 x 5 x 5 map into C5)
        assert seen[-1][1] == net.head.in_features


def test_to_pixels_undoes_the_normalisation_and_panels_are_side_by_side():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.1)
    pixels = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    x = (pixels / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert np.array_equal(to_pixels(x, mean, std), pixels.permute(0, 2, 3, 1).numpy())
    both = panel(to_pixels(x, mean, std)[0], torch.zeros(4, 5), scale=3)
    assert both.shape == (12, 33, 3) and np.array_equal(both[::3, :15:3], pixels[0].permute(1, 2, 0).numpy())


def test_without_captum_only_gradcam_is_skipped_with_one_warning(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "captum.attr", None)  # import captum.attr -> ImportError
    prep = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
    model = zoo.create_model("lenet5", classes=CLASSES, preprocessing=prep).eval()
    media = ImageMedia(samples=2)
    trainer = SimpleNamespace(current_epoch=0, world_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            media.batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))]
            media.confusion = torch.eye(10, dtype=torch.long)
            logged = media.media(trainer, model)
            assert set(logged) == {"predictions", "confusion_matrix", "per_class_accuracy"}
    assert len([w for w in caught if "Grad-CAM" in str(w.message)]) == 1


# -- zoo predict --explain ----------------------------------------------------------------------------------------
def test_zoo_predict_explain_writes_a_png_per_image(capsys, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "explained"
    code = main(["predict", "lenet5.cifar10", *map(str, paths), "--explain", "--out", str(out), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["input"] for r in rows] == list(map(str, paths))
    for row in rows:
        written = Path(row["explanation"])
        assert written.parent == out and written.name.startswith(Path(row["input"]).stem + ".")
        assert f".{row['output'][0][0]}.gradcam.png" in written.name, "the predicted class names the file"
        with Image.open(written) as im:
            assert im.format == "PNG" and im.size == ((2 * 32 + 1) * 4, 16 + 32 * 4), "title strip over the panel"
    code = main(["predict", "lenet5.cifar10", str(paths[0]), "--explain", "--out", str(out)])
    assert code == 0 and f"Grad-CAM: {out}" in capsys.readouterr().out
    code = main(["predict", "gru_classifier.names", "Nakamura", "--explain"])
    assert code == 2 and "--explain (Grad-CAM) is for image models" in capsys.readouterr().err
