"""Optimisers and per-step learning-rate schedules shared by the tasks."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
ADAM_EPS = 1e-8  # PyTorch's default
LENGTHLESS = ("constant",)  # schedules that need no total number of steps (a run bounded by time alone)


def param_groups(
    module: nn.Module,
    weight_decay: float,
    lr: float,
    is_head: Callable[[str], bool] | None = None,
    backbone_lr_mult: float = 1.0,
    no_decay: Collection[str] = (),
) -> list[dict]:
    """Weights of convolutions/linears decay; norm parameters and biases (1-d tensors) do not, nor the parameters
    named in ``no_decay``. With ``is_head``, the parameters it does not name (the backbone) learn at
    ``lr * backbone_lr_mult`` (discriminative fine-tuning, Howard & Ruder 2018). Frozen parameters are included:
    they get no gradient, so the optimiser skips them, and unfreezing them later needs no new group."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in module.named_parameters():
        backbone = is_head is not None and not is_head(name)
        groups.setdefault((p.ndim <= 1 or name in no_decay, backbone), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * (backbone_lr_mult if backbone else 1.0),
            "name": ("backbone" if backbone else "head" if is_head else "weights") + ("_no_decay" if no_decay else ""),
        }
        for (no_decay, backbone), params in sorted(groups.items())
    ]


def build_optimizer(
    module: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    is_head: Callable[[str], bool] | None = None,
    backbone_lr_mult: float = 1.0,
    no_decay: Collection[str] = (),
    allow_fused: bool = True,
) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``momentum``) or AdamW over :func:`param_groups`, fused where :func:`fused_kwargs` says
    and ``allow_fused`` (False where a GradScaler's gradients are clipped: a fused step unscales them itself)."""
    groups = param_groups(module, weight_decay, lr, is_head, backbone_lr_mult, no_decay)
    fused = fused_kwargs(module) if allow_fused else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, **fused)
    return torch.optim.AdamW(groups, lr=lr, eps=adam_eps(module), **fused)


FUSED_DEVICES = ("cuda",)  # where the fused kernels are chosen: one kernel per step for all the parameters


def _device_types(module: nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def fused_kwargs(module: nn.Module) -> dict:
    """``{"fused": True}`` when every parameter of ``module`` is a floating-point tensor on CUDA: the optimiser's
    update is one kernel over all the parameters instead of a few per tensor (or per group of tensors, torch's
    ``foreach`` default), the fastest of torch's implementations there; else ``{}`` (torch's default: ``foreach``
    on accelerators, a loop on CPU). Lightning builds the optimisers once the model is on its device."""
    if _device_types(module) - set(FUSED_DEVICES) or not any(True for _ in module.parameters()):
        return {}
    if not all(p.is_floating_point() for p in module.parameters()):
        return {}
    return {"fused": True}


def adam_eps(module: nn.Module, eps: float = ADAM_EPS) -> float:
    """Adam's ``eps`` for the weights of ``module``: ``eps`` unless their dtype cannot hold it, then the smallest
    normal number of that dtype. Adam keeps its moments in the weights' dtype, and 1e-8 is 0 in float16
    (``16-true``): a weight whose gradient is 0 (an embedding row not in the batch) then steps by 0/0 = NaN, and one
    whose squared gradient underflows by m/0 = inf. float16's 6.1e-5 bounds that step by ~lr."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    floor = max((torch.finfo(d).tiny for d in dtypes), default=0.0)
    if floor <= eps:
        return eps
    names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
    rank_zero_info(f"AdamW eps {floor:.3g} instead of {eps:g}, which is 0 in the weights' {names}")
    return floor


def build_schedule(
    opt: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine to 0 (``cosine``), a one-cycle (warm-up then
    cosine annealing to lr/1e4, momentum cycled inversely; Smith & Topin 2018) or ``constant``."""
    if name == "onecycle":
        max_lrs = [g["lr"] for g in opt.param_groups]
        pct = min(max(warmup_steps / max(total_steps, 1), 1e-3), 0.999)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=max(total_steps, 1), pct_start=pct)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
