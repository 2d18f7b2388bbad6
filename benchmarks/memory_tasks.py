"""Which recurrent cell remembers across how many steps: the adding problem and the copy-memory task.

Trains each cell (``rnn`` tanh with orthogonal init, ``irnn`` = relu RNN with identity init, ``lstm``, ``gru``)
for the same number of steps on each task and length, with the same optimiser, and prints when (if ever) it
solved the task on the validation split:
- adding: validation MSE below 0.01 (predicting the mean scores 0.167);
- copy: recall accuracy at least 0.99 (guessing scores 1/8).

Usage: ``python benchmarks/memory_tasks.py [--adding 50 100 200] [--copy 10 30 60] [--steps 3000]``.
The same runs go through ``train.py``: ``train.py fit --model lstm_classifier --data adding --data.length 200``.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from _common import quiet_trainer

import zoo
from datamodules.synthetic import AddingDataModule, CopyMemoryDataModule

CELLS = {
    "rnn": ("rnn_classifier", {}),
    "irnn": ("rnn_classifier", {"nonlinearity": "relu", "recurrent_init": "identity"}),
    "lstm": ("lstm_classifier", {}),
    "gru": ("gru_classifier", {}),
}


class Watch(L.Callback):
    """Records the first training step at which the validation metric passes the bar."""

    def __init__(self, metric: str, solved) -> None:
        self.metric, self.solved, self.step, self.last = metric, solved, None, None

    def on_validation_end(self, trainer, pl_module) -> None:
        value = float(trainer.callback_metrics[self.metric])
        self.last = value
        if self.step is None and trainer.global_step > 0 and self.solved(value):
            self.step = trainer.global_step
            trainer.should_stop = True


def run(task: str, length: int, cell: str, steps: int, hidden: int, lr: float) -> tuple[int | None, float, float]:
    L.seed_everything(0)
    if task == "adding":
        dm, watch = AddingDataModule(length=length, batch_size=64), Watch("val_loss", lambda v: v < 0.01)
    else:
        dm, watch = CopyMemoryDataModule(length=length, batch_size=64), Watch("val_acc", lambda v: v >= 0.99)
    name, net_kwargs = CELLS[cell]
    model = zoo.create_model(name, hidden_size=hidden, lr=lr, schedule="constant", grad_clip=1.0, **net_kwargs)
    trainer = quiet_trainer(
        max_steps=steps,
        val_check_interval=100,
        check_val_every_n_epoch=None,
        limit_val_batches=8,
        callbacks=[watch],
    )
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    return watch.step, watch.last, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adding", nargs="*", type=int, default=[50, 100, 200])
    ap.add_argument("--copy", nargs="*", type=int, default=[10, 30, 60])
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; hidden {args.hidden}, batch 64, "
        f"AdamW lr {args.lr}, clip 1.0, at most {args.steps} steps, validated every 100"
    )
    print("| task | T | cell | solved at step | last val metric | seconds |")
    print("|---|---:|---|---:|---:|---:|")
    for task, lengths in (("adding", args.adding), ("copy", args.copy)):
        for length in lengths:
            for cell in args.cells:
                step, last, secs = run(task, length, cell, args.steps, args.hidden, args.lr)
                metric = f"MSE {last:.4f}" if task == "adding" else f"acc {last:.3f}"
                print(
                    f"| {task} | {length} | {cell} | {step if step else 'not solved'} | {metric} | {secs:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
