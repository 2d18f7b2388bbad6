"""What a task adds to Lightning to train as several processes (DDP), each called from a hook of ``Task``:

- **rank 0's model comes back to the caller** of a spawned run (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``).
  Lightning sends the caller rank 0's state dict alone and loads it with ``strict=False``
  (``_MultiProcessingLauncher._recover_results_in_main_process``), but a text task builds its net in ``fit_to_data``
  from the data's vocabularies, and ``fit_to_data`` runs in the workers only: the caller's net stayed ``None`` and every
  trained weight was dropped without a word (a fine-tuned image classifier with other classes failed on the
  shapes). So a task's state dict says which net it holds (the hyperparameters that build it, in the state dict's
  metadata, which ``torch.save`` keeps), and loading it into a task without a net that can hold it, outside a run,
  builds that net first.
- **a frozen backbone under DDP.** DDP reduces the gradients of the parameters that required one when it wrapped
  the model: a parameter frozen afterwards stalls its reduction, and one unfrozen afterwards trains on each rank's
  own gradients (the ranks drift apart, silently). The backbone is frozen before the strategy wraps the model
  (``Task.configure_model``), and the model is wrapped anew when ``unfreeze_epoch`` changes what trains.
- **SyncBatchNorm off GPUs** is refused before the model is wrapped, in one line (DDP's wrapping fails with
  "SyncBatchNorm layers only work with GPU modules"), where ``--trainer.sync_batchnorm true`` meets CPU processes.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["NET_KEY", "build_described_net", "describe_net", "refuse_sync_batchnorm_off_gpu", "rewrap"]

NET_KEY = "zoo_net"  # in a task's state-dict metadata: the hyperparameters its net is built from
SYNC_BN_DEVICES = ("cuda", "hpu", "xpu")  # where torch's SyncBatchNorm synchronises (and a PrivateUse1 backend)


def describe_net(task: L.LightningModule, destination: dict, prefix: str) -> None:
    """Record in ``destination``'s metadata (a state dict being written) the hyperparameters that build ``task``'s
    net: its ``weights_kwargs`` and ``data_kwargs`` (what ``fit_to_data`` takes from the data)."""
    meta = getattr(destination, "_metadata", None)
    if meta is None or prefix[:-1] not in meta or getattr(task, "net", None) is None:
        return
    h = task.hparams
    meta[prefix[:-1]][NET_KEY] = copy.deepcopy({k: h[k] for k in (*task.weights_kwargs, *task.data_kwargs) if k in h})


def build_described_net(task: L.LightningModule, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Before ``state_dict`` loads into ``task``: build the net it describes when ``task`` has none or, outside a run
    (no trainer attached: the caller of a spawned run, a user loading by hand), one whose shapes cannot hold it.
    Inside a run the task's net is the data's, and a state dict of another net stays an error, as it was."""
    described = local_metadata.get(NET_KEY)
    if not described:
        return
    if task.net is not None:
        mine, at = task.net.state_dict(), prefix + "net."
        theirs = {k[len(at) :]: v for k, v in state_dict.items() if k.startswith(at)}
        fits = all(k in mine and mine[k].shape == v.shape for k, v in theirs.items())
        if task._trainer is not None or fits:
            return
    task.adopt(**copy.deepcopy(described))
    task._build()


def refuse_sync_batchnorm_off_gpu(task: L.LightningModule) -> None:
    """Refuse SyncBatchNorm (``--trainer.sync_batchnorm true``, or layers converted by hand) for a run on a device
    torch cannot synchronise them on: called before the strategy converts and wraps the model, as DDP's wrapping
    fails there with "SyncBatchNorm layers only work with GPU modules"."""
    strategy = task.trainer.strategy
    kind = strategy.root_device.type
    if kind in (*SYNC_BN_DEVICES, torch._C._get_privateuse1_backend_name()):
        return
    converts = isinstance(getattr(strategy, "_layer_sync", None), TorchSyncBatchNorm)  # what Trainer(sync_batchnorm)
    if any(isinstance(m, nn.SyncBatchNorm) or (converts and isinstance(m, _BatchNorm)) for m in task.modules()):
        raise ValueError(
            f"--trainer.sync_batchnorm true on {kind.upper()} processes: torch's SyncBatchNorm runs on GPUs only. "
            "Leave it off on CPU (each process then normalises by its own batch), or train on GPUs "
            "(configs/trainer/ddp.yaml)"
        )


def rewrap(task: L.LightningModule) -> None:
    """Wrap ``task`` in DDP anew after its trainable parameters changed (see the module's docstring); on one process
    without DDP there is nothing to do. Called on every rank at the same batch (the epoch decides)."""
    strategy = task.trainer.strategy
    wrapped = strategy.model
    if not isinstance(wrapped, DistributedDataParallel):
        if task.trainer.world_size > 1:
            raise ValueError(
                f"--model.unfreeze_epoch under {type(strategy).__name__}: the zoo wraps the model anew for DDP only, "
                "when the backbone starts training; use --trainer.strategy ddp (or fine-tune without "
                "--model.unfreeze_epoch)"
            )
        return
    wrapped._remove_autograd_hooks()  # else the old wrapper's reducer still fires on every gradient
    strategy.model = task
    strategy.configure_ddp()
