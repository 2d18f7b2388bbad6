"""What every task shares: the optimiser and per-step schedule from its hyperparameters, a record of the
DataModule class in each checkpoint (so that ``zoo publish`` can rebuild the data it was trained on), the
restore of resumable train loaders when a run resumes mid-epoch, and ``torch.compile`` of the net while it fits
(``compile``; ``zoo.tasks._compile``). Fine-tuning is ``zoo.tasks._finetune``."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from zoo._registry import check_task
from zoo.tasks._compile import compile_net, uncompile_net
from zoo.tasks._distributed import build_described_net, describe_net, refuse_sync_batchnorm_off_gpu, rewrap
from zoo.tasks._finetune import FineTuning
from zoo.tasks._optim import LENGTHLESS, OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule, check_choice
from zoo.tasks._precision import PrecisionGuard

__all__ = ["Task"]


class Task(FineTuning, L.LightningModule):
    """The base of every task. Fine-tuning from published weights (``freeze``, ``unfreeze_epoch``,
    ``backbone_lr_mult``, ``pretrained``) comes from ``zoo.tasks._finetune``; one speed switch is here:
    ``compile`` (True, False, or None for the family's ``compile_default``) compiles the net with ``torch.compile``
    while a run fits (see ``zoo.tasks._compile``); checkpoints and state dicts are the same.
    """

    monitor: tuple[str, str] = ("val_loss", "min")  # what ModelCheckpoint selects on in train.py
    # the headline metric (the monitored one, on test) is reported in points: this many per unit of the metric
    # (fractions such as accuracy x100; BLEU, already 0-100, x1; a loss in nats x100, so a point is 0.01 nats)
    points_per_unit: float = 100.0
    weights_kwargs: tuple[str, ...] = ()  # hyperparameters that rebuild the net of published weights
    data_kwargs: tuple[str, ...] = ()  # others that fit_to_data takes from the data (a state dict records both)
    # what ``compile=None`` means for the family: off unless torch.compile clearly wins on its training step
    # (benchmarks/compile_speed.py) and compiles reliably, so that tests and first runs do not pay its compile time
    compile_default: bool = False
    # hyperparameters that change how fast a run trains, not what it computes: a resume may set them otherwise
    speed_kwargs: tuple[str, ...] = ("compile",)

    @classmethod
    def headline_metric(cls) -> tuple[str, float]:
        """The metric this task selects on, as measured on test, and its scale to points (``points_per_unit``):
        what ``zoo publish`` keeps fp16 within tolerance on and ``zoo evaluate`` compares."""
        return "test_" + cls.monitor[0].removeprefix("val_"), cls.points_per_unit

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        """The headline metric of ``split`` (``test``, ``val``) in ``metrics``, as the README and ``zoo info``
        show it."""
        key = f"{split}_{cls.monitor[0].removeprefix('val_')}"
        return f"{key.removeprefix(split + '_')} {metrics[key]:.4f}"

    def configure_callbacks(self) -> list[L.Callback]:
        """The precision checks every task runs (``zoo.tasks._precision``): a precision the device cannot train under
        is refused at fit start, and steps a float16 loss scaler skips are announced."""
        return [PrecisionGuard()]

    def compiles(self) -> bool:
        """Whether fitting compiles the net: the ``compile`` hyperparameter, or the family's default when None (and
        for checkpoints from before it existed)."""
        value = self.hparams.get("compile")
        return type(self).compile_default if value is None else bool(value)

    def fit_to_data(self, stage: str) -> None:
        """Build the net from the DataModule (a text task's vocabulary, a fine-tuned classifier's classes) or check
        that the data agrees with it (``stage``: fit, validate, test or predict). Must be idempotent."""

    def configure_model(self) -> None:
        """Before the strategy moves and wraps the model (``zoo.tasks._distributed``): the net built from the data
        (``fit_to_data``), then, for a fit, refuse SyncBatchNorm off GPUs, freeze the backbone (DDP then leaves out
        what does not train), and compile the net when ``compiles()`` (``zoo.tasks._compile``).

        The data's part is here rather than in ``setup`` because Lightning's ``WeightAveraging`` (EMA, SWA) copies
        the module in its own ``setup``, which runs before the module's, after calling ``configure_model``: so the
        copy holds the net the data asks for (Lightning calls this hook again later; every step is idempotent).
        The net is built in float32 whatever default dtype Lightning's ``tensor_init_context`` sets here for a
        "-true" precision (orthogonal and other initialisations have no half-precision CPU kernels): the precision
        plugin converts the whole module afterwards, as it converts a net built at construction."""
        if self._trainer is None:
            return
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            self.fit_to_data(self.trainer.state.fn.value)
        finally:
            torch.set_default_dtype(dtype)
        if self.trainer.state.fn == TrainerFn.FITTING:
            refuse_sync_batchnorm_off_gpu(self)
            if self.backbone_frozen(self.current_epoch) != self._frozen:
                self._set_frozen(not self._frozen)
            if self.compiles() and self.net is not None:
                compile_net(self.net, self.hparams.arch, self.trainer.strategy.root_device.type)

    def on_fit_end(self) -> None:
        """The net is eager again after the fit: what is exported, evaluated or predicted next is the plain net (the
        compiled call would recompile for every new use)."""
        uncompile_net(self.net)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Seed this batch's randomness (dropout ...) from (run seed, epoch, batch, rank), so that a run resumed
        mid-epoch draws what an unbroken run draws, whatever the loaders drew before; then freeze or unfreeze the
        backbone when the epoch asks for another state (checked per batch, for the same reason)."""
        run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        seed = hash((run_seed, self.current_epoch, batch_idx, self.global_rank)) % 2**63
        if self.device.type == "cpu":  # the draws torch.manual_seed gives on a CPU, in 1 us instead of ~0.7 ms: on a
            torch.default_generator.manual_seed(seed)  # CUDA build it queues a lazy seed per absent accelerator,
        else:  # formatting a stack trace each time (torch.cuda._lazy_call), at every batch
            torch.manual_seed(seed)
        frozen = self.backbone_frozen(self.current_epoch)
        if frozen != self._frozen:
            self._set_frozen(frozen)
            rewrap(self)  # DDP reduces the gradients of what trained when it wrapped the model

    def check_training_args(self) -> None:
        """Refuse a model this task does not train, and bad values of the optimisation and fine-tuning
        hyperparameters that every task shares (each task checks its own besides): called once they are saved."""
        h = self.hparams
        check_task(h.arch, type(self))  # the registry says which task trains which model
        check_choice("optimizer", h.optimizer, OPTIMIZERS)
        check_choice("schedule", h.schedule, SCHEDULES)
        rules = {
            "lr": (h.lr > 0, "> 0"),
            "weight_decay": (h.weight_decay >= 0, ">= 0"),
            "warmup_epochs": (h.warmup_epochs >= 0, ">= 0"),
            "label_smoothing": (0 <= h.get("label_smoothing", 0.0) < 1, "in [0, 1)"),
            "grad_clip": (h.get("grad_clip") is None or h.grad_clip > 0, "> 0 or None (no clipping)"),
            "backbone_lr_mult": (h.backbone_lr_mult >= 0, ">= 0 (0 keeps the backbone fixed)"),
        }
        bad = [f"{k} must be {rule}, got {h[k]!r}" for k, (ok, rule) in rules.items() if not ok]
        if bad:
            raise ValueError("; ".join(bad))
        if h.get("compile") not in (None, True, False):
            raise ValueError(f"compile must be true, false or None (the family's default); got {h.compile!r}")
        self.check_finetune_args()

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) inside the block, the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @property
    def datamodule(self) -> object | None:
        """The trainer's DataModule, which ``fit_to_data`` reads as ``datamodules.contract`` says; None without a
        trainer or when the trainer was given loaders instead."""
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def adopt(self, **values) -> None:
        """Set hyperparameters taken from the DataModule in ``fit_to_data`` (its tokenizer ...). They go into the
        initial hyperparameters too: Lightning merges those with the DataModule's when a logger records them, and a
        key both hold with two values is an error there."""
        self.hparams.update(values)
        self._hparams_initial.update(values)

    def _save_to_state_dict(self, destination, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        describe_net(self, destination, prefix)  # rank 0's net reaches the caller of ddp_spawn (zoo.tasks._distributed)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        build_described_net(self, state_dict, prefix, local_metadata)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = self.datamodule
        if dm is not None:
            checkpoint["datamodule_class_path"] = f"{type(dm).__module__}.{type(dm).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        loops = checkpoint.get("loops") or {}
        self._loader_states = loops.get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []

    def on_train_start(self) -> None:
        """Lightning restores a train loader that has ``state_dict`` only if it was not set up before the restore,
        and ``configure_optimizers`` sets it up when it reads ``estimated_stepping_batches`` (Lightning #20550):
        the epoch would replay from its first batch. Apply the saved loader state here, before iteration."""
        states, self._loader_states = getattr(self, "_loader_states", []), []
        loaders = self.trainer.train_dataloader
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict") and hasattr(dl, "state_dict")]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)

    train_metrics: tuple[str, ...] = ()  # torchmetrics attributes that training steps ``update``

    def on_train_epoch_end(self) -> None:
        """Log each of ``train_metrics`` over the epoch, then reset it: once an epoch, not ``self.log(metric)`` at every
        step, where Lightning moves the metric to the device on each call (~1-3 ms a step, as much as a small net's
        step). ``compute`` syncs the metric over DDP processes."""
        for name in self.train_metrics:
            metric = getattr(self, name)
            if metric.update_count:
                self.log(name, metric.compute())
            metric.reset()

    # -- evaluation: the same step and epoch end for validation and test, told apart by ``stage`` -----------------
    def _eval_step(self, batch, stage: str) -> None:
        raise NotImplementedError

    def _eval_epoch_end(self, stage: str) -> None:
        """Nothing by default: tasks that log per step need no epoch end."""

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the ``grad_clip`` hyperparameter (norm) when the task has one; ``--trainer.gradient_clip_val``
        overrides it."""
        val = self._clip_value(gradient_clip_val)
        if val:
            self.clip_gradients(optimizer, val, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    # -- the optimiser and its schedule -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Lightning's first hook of a run, before the DataModule reads anything: a schedule the trainer gives no
        length is refused here, not after the data has loaded (``configure_optimizers`` checks again, on every
        process: this hook runs on one per node)."""
        t = self._trainer
        if t is not None and t.state.fn == TrainerFn.FITTING and t.max_epochs == -1 and t.max_steps == -1:
            self._no_schedule_length()

    def _no_schedule_length(self) -> None:
        """Refuse a schedule that needs the run's length (cosine, onecycle) when the trainer does not bound it."""
        schedule = self.hparams.schedule
        if schedule in LENGTHLESS:
            return
        raise ValueError(
            f"the trainer bounds this run by neither max_epochs nor max_steps (--trainer.max_time alone, or -1), so "
            f"the {schedule} schedule, which anneals the learning rate over the run's steps, has no length: also set "
            "--trainer.max_epochs or --trainer.max_steps (training stops at whichever limit comes first), or use "
            "--model.schedule constant"
        )

    def schedule_steps(self) -> tuple[int, int]:
        """(optimiser steps of the run, steps before the warm-up ends) for the schedule; the run's steps are 0 when
        only a time limit bounds it (a ``constant`` schedule needs none)."""
        h, t = self.hparams, self.trainer
        total = t.estimated_stepping_batches  # inf when only max_time bounds the run; -1 for an endless loader
        if not math.isfinite(total) or total < 1:
            self._no_schedule_length()
            total = 0
        if not h.warmup_epochs:
            return int(total), 0
        if t.train_dataloader is None:  # estimated_stepping_batches loads it only when max_epochs bounds the run
            t.fit_loop.setup_data()
        batches = t.num_training_batches  # this process's, after limit_train_batches
        if not math.isfinite(batches):
            raise ValueError(
                f"warmup_epochs={h.warmup_epochs} needs the length of an epoch, and this training loader has none: "
                "use --model.warmup_epochs 0"
            )
        per_epoch = math.ceil(batches / t.accumulate_grad_batches)
        return int(total), int(h.warmup_epochs * per_epoch)

    def _clip_value(self, gradient_clip_val: float | None) -> float | None:
        """The norm clip: ``--trainer.gradient_clip_val`` if given, else the ``grad_clip`` hyperparameter."""
        return gradient_clip_val if gradient_clip_val is not None else self.hparams.get("grad_clip")

    def _clips_scaled_gradients(self) -> bool:
        """Whether gradients that a GradScaler scaled (float16 mixed precision) will be clipped (``grad_clip`` or
        ``--trainer.gradient_clip_val``): Lightning unscales them before it clips, which a fused optimiser, which
        unscales inside its own step, refuses at the first step ("... does not allow for gradient clipping")."""
        t = self._trainer
        if t is None or getattr(t.precision_plugin, "scaler", None) is None:
            return False
        return bool(self._clip_value(t.gradient_clip_val))

    def configure_optimizers(self):
        h = self.hparams
        mult = h.get("backbone_lr_mult", 1.0)
        is_head = self.is_head if mult != 1.0 else None
        no_decay = set(self.known_rows) if h.get("freeze") else set()  # rows kept as published while frozen
        fused = not self._clips_scaled_gradients()
        opt = build_optimizer(self.net, h.optimizer, h.lr, h.weight_decay, h.momentum, is_head, mult, no_decay, fused)
        sched = build_schedule(opt, h.schedule, *self.schedule_steps())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
