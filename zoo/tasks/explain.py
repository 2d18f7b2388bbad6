"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017) for the image classifiers: where in an image the evidence for a class lies, as the ReLU of the net's last
spatial feature maps weighted by the spatial mean of the class score's gradient. captum's ``LayerGradCam`` (the
``explain`` extra) computes it; this module picks the layer, runs it safely inside a validation loop as well as
outside one, and renders the heatmap over the image.

It lives beside the tasks because both its users hold a task: the W&B media of an image run (a callback) and
``zoo predict --explain`` (the CLI, which needs no training code). It reads nothing from the data side: the pixels
come back from the model's own ``preprocessing`` (mean, std).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["target_layer", "gradcam", "to_pixels", "overlay", "panel", "titled", "explain_images"]

SCALE = 4  # a panel's pixels per input pixel: CIFAR's 32x32 images are too small to read at 1:1
ALPHA = 0.5  # weight of the heatmap's colour over the image


def target_layer(net: nn.Module, x: torch.Tensor) -> str:
    """The name of the module whose output is the net's last spatial feature map: of the modules that return a
    (B, C, H, W) tensor with H * W > 1, the last to finish in a forward pass of ``x[:1]``.

    Containers count, since a module's forward hook fires after its children's: this is the map the classifier
    pools, which Grad-CAM targets ("the last convolutional layer"). It is not simply the last ``nn.Conv2d``: a
    ResNet's last convolution misses the block's shortcut, and a DenseNet's holds only its ``growth_rate`` new
    channels of the hundreds the classifier reads. Maps already pooled to 1x1 explain nothing, so a net whose last
    map is 1x1 (VGG at 32x32) is explained at the last map larger than that."""
    names = {m: n for n, m in net.named_modules() if m is not net}
    finished: list[str] = []

    def note(module: nn.Module, args, output) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
            finished.append(names[module])

    hooks = [m.register_forward_hook(note) for m in names]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in hooks:
            h.remove()
    if not finished:
        raise ValueError(f"{type(net).__name__} has no spatial feature map (B, C, H, W) to explain")
    return finished[-1]


def gradcam(
    net: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM heatmaps (B, H, W) in [0, 1] at the input's resolution (each scaled by its own maximum; all zero
    where no evidence is positive) for the classes ``target`` (B,) (default: the predicted ones), and the class
    probabilities (B, num_classes) of ``x``, both float32 on the CPU.

    ``x`` is the net's input (normalised). Runs in float32 with gradients whatever the caller's context (a
    validation loop's inference mode, no_grad, autocast), on a float32 copy when the net is in another dtype, in
    eval mode; the net's mode is restored and its parameters' ``.grad`` are left untouched (captum takes gradients
    with ``torch.autograd.grad``). ``layer``: the name of the module to explain (default :func:`target_layer`)."""
    try:
        from captum.attr import LayerGradCam
    except ImportError as e:
        raise ImportError("Grad-CAM needs captum: pip install 'lightning-zoo[explain]'") from e
    dtypes = {p.dtype for p in net.parameters()}
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(x.device.type, enabled=False))
        work = net if dtypes <= {torch.float32} else copy.deepcopy(net).float()
        was_training = work.training
        work.eval()
        try:
            inputs = x.detach().clone().float()  # a clone made outside inference mode can require grad
            layer = layer or target_layer(work, inputs)
            with torch.no_grad():
                probs = work(inputs).float().softmax(-1)  # (B, num_classes)
            # a target made in inference mode cannot enter autograd (captum gathers the scores with it): a clone can
            target = probs.argmax(-1) if target is None else target.to(inputs.device).clone()
            inputs.requires_grad_(True)  # a frozen backbone still gets a graph down to the layer
            cam = LayerGradCam(work, work.get_submodule(layer)).attribute(inputs, target=target, relu_attributions=True)
        finally:
            work.train(was_training)
    cam = cam.detach().float()  # (B, 1, h, w): captum sums the gradient-weighted maps over channels
    heat = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    heat = heat.clamp_min(0)
    peak = heat.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (heat / peak).cpu(), probs.detach().cpu()


def to_pixels(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """Normalised net inputs (B, C, H, W) back to RGB pixels (B, H, W, 3) uint8: ``x * std + mean`` (one channel
    repeated to three). Without ``mean``/``std`` each image is stretched to its own range (the best guess)."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    else:
        low, high = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
        x = (x - low) / (high - low).clamp_min(1e-12)
    x = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    return x.permute(0, 2, 3, 1).numpy()


def overlay(pixels: np.ndarray, heat: np.ndarray | torch.Tensor, alpha: float = ALPHA) -> np.ndarray:
    """The heatmap (H, W) in [0, 1] in the ``jet`` colours (blue: no evidence, red: the most) over the image
    (H, W, 3) uint8, as uint8."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.asarray(heat, dtype=np.float32))[..., :3] * 255  # (H, W, 3)
    return ((1 - alpha) * pixels.astype(np.float32) + alpha * colours).round().clip(0, 255).astype(np.uint8)


def panel(pixels: np.ndarray, heat: np.ndarray | torch.Tensor, scale: int = SCALE) -> np.ndarray:
    """The image beside its Grad-CAM overlay, each enlarged ``scale`` times (nearest: no invented detail), with a
    white gap of ``scale`` pixels: (H * scale, (2 W + 1) * scale, 3) uint8."""
    gap = np.full((pixels.shape[0], 1, 3), 255, np.uint8)
    both = np.concatenate([pixels, gap, overlay(pixels, heat)], axis=1)
    return both.repeat(scale, 0).repeat(scale, 1)


def titled(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (H, W, 3) uint8 under a white strip holding ``text`` (PIL's default font)."""
    strip = Image.new("RGB", (image.shape[1], 16), "white")
    ImageDraw.Draw(strip).text((2, 2), text, fill="black")
    return np.concatenate([np.asarray(strip), image], axis=0)


def explain_images(model, inputs: Sequence[str | Path], out: str | Path) -> list[tuple[Path, str, float]]:
    """``zoo predict --explain``: for each image file, a PNG in ``out`` of the image as the model reads it (resized
    and cropped as ``preprocessing`` says) beside the Grad-CAM of the class it predicts, titled with that class and
    its probability. ``model`` is an ``ImageClassifier``. Returns (path written, class, probability) per input."""
    x = model.preprocess(list(inputs))  # (N, C, H, W) normalised
    prep = model.hparams.preprocessing or {}
    names = model.hparams.classes or [str(i) for i in range(model.hparams.num_classes)]
    net = model.net
    heat, probs = gradcam(net, x.to(next(net.parameters()).device))
    pixels = to_pixels(x, prep.get("mean"), prep.get("std"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, str, float]] = []
    taken: set[Path] = set()
    for i, given in enumerate(inputs):
        p, c = probs[i].max(0)
        name, prob = names[int(c)], float(p)
        slug = re.sub(r"[^\w.-]+", "_", name)
        path = out / f"{Path(given).stem}.{slug}.gradcam.png"
        if path in taken:  # two inputs with one stem (a/x.png, b/x.png): numbered, never overwritten
            path = out / f"{Path(given).stem}-{i}.{slug}.gradcam.png"
        taken.add(path)
        Image.fromarray(titled(panel(pixels[i], heat[i]), f"{name} {prob:.2f}")).save(path)
        written.append((path, name, prob))
    return written
