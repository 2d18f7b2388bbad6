"""Training throughput of the LSTM language model: ``LanguageModel`` through the Trainer that ``train.py`` builds
(stateful truncated BPTT, manual optimisation, the char-LM DataModule) against a plain PyTorch loop (embedding,
``nn.LSTM``, linear decoder, AdamW, gradient-norm clipping, the hidden state carried and detached between windows)
over the same token stream, with the same sizes and the same number of tokens.

Both run in this process, alternating (``--rounds`` times each, after ``--warmup`` steps of each); the best
tokens/s of each is kept and their ratio printed (zoo / plain: 1.00 means Lightning and the task cost nothing).
The train.py run is quiet (no logger, no checkpointing, no progress bar, no model summary) but otherwise the
recipe's; ``--logged`` also times it with a CSV logger, checkpointing and the progress bar on (train.py's
defaults, with CSV in place of W&B). Text: Tiny Shakespeare under ``ZOO_DATA_DIR`` when present, else synthetic.

    OMP_NUM_THREADS=1 ZOO_DATA_DIR=../shared/data python benchmarks/lm_throughput.py        # ~60 s, 1 thread
    python benchmarks/lm_throughput.py --sizes small --steps 100 --rounds 5 --logged
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from _common import header, quiet_lightning  # noqa: E402

from datamodules.charlm import CharLMDataModule, StreamBatches  # noqa: E402
from zoo.cli.file_loggers import RUN_DIR_ENV  # noqa: E402
from zoo.cli.train import ZooCLI, rewrite_argv  # noqa: E402


@dataclass(frozen=True)
class Size:
    embed: int
    hidden: int
    layers: int
    bptt: int
    batch: int
    blocks: int  # alternating timed blocks of each (default)
    block: int  # optimiser steps per block


SIZES = {
    "recipe": Size(
        embed=128, hidden=512, layers=2, bptt=128, batch=64, blocks=6, block=1
    ),  # configs/lstm_lm.tinyshakespeare
    "small": Size(
        embed=32, hidden=128, layers=2, bptt=64, batch=32, blocks=15, block=10
    ),  # where per-step overheads show
}
DROPOUT, LR, WEIGHT_DECAY, GRAD_CLIP, WARMUP_EPOCHS = 0.3, 2e-3, 0.01, 1.0, 0.2  # the recipe's


def text_file(workdir: Path) -> tuple[Path, str]:
    """Tiny Shakespeare when ``ZOO_DATA_DIR`` holds it, else ~1.1 MB of seeded random text over 65 characters."""
    real = Path(os.environ.get("ZOO_DATA_DIR", "~/.cache/zoo/data")).expanduser() / "tinyshakespeare" / "input.txt"
    if real.is_file():
        return real, "Tiny Shakespeare"
    g = torch.Generator().manual_seed(0)
    alphabet = [chr(c) for c in range(32, 96)] + ["\n"]
    ids = torch.randint(len(alphabet), (1_115_394,), generator=g).tolist()
    path = workdir / "synthetic.txt"
    path.write_text("".join(alphabet[i] for i in ids), encoding="utf-8")
    return path, "synthetic text (no Tiny Shakespeare under ZOO_DATA_DIR)"


# -- the plain PyTorch loop -------------------------------------------------------------------------------------
class PlainLM(nn.Module):
    """Embedding, dropout, ``nn.LSTM`` (dropout between its layers), dropout, linear decoder."""

    def __init__(self, vocab: int, size: Size, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, size.embed)
        self.lstm = nn.LSTM(size.embed, size.hidden, size.layers, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(size.hidden, vocab)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.lstm(self.drop(self.embedding(x)), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)


def recipe_schedule(total_steps: int, warmup_steps: int):
    """The recipe's learning-rate factor per step: linear warm-up over ``warmup_steps``, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)))

    return factor


def plain_training(
    model: PlainLM,
    windows,
    lr_factor=lambda step: 1.0,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    clip=GRAD_CLIP,
):
    """A generator that trains ``model`` on the ``(x, y)`` windows, one AdamW step per window with gradient-norm
    clipping and the learning rate ``lr * lr_factor(step)``, the state carried and detached between windows; it
    yields each step's loss (a tensor)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    state = None
    for x, y in windows:
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        state = tuple(s.detach() for s in state)
        yield loss.detach()


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class Interleaved(lightning.Callback):
    """Times the train.py run and the plain loop in blocks that alternate inside one ``fit``: after every
    ``block`` training batches of the Trainer, ``block`` steps of the plain loop run in this hook. The time from
    this hook at one batch to this hook at the next is one whole loop iteration of the Trainer (loading, hooks, the
    step, logging); the plain loop's steps are timed on their own, so the machine's drift falls on both alike.
    Wall-clock and CPU time (of the process: what a loaded machine inflates least) are both kept."""

    def __init__(self, plain_steps, warmup: int, block: int) -> None:
        self.plain_steps, self.warmup, self.block = plain_steps, warmup, block
        self.zoo, self.plain = [0.0, 0.0], [0.0, 0.0]  # (wall, cpu) seconds of the timed steps
        self.zoo_steps = self.plain_steps_done = 0
        self.block_ratios: list[float] = []  # zoo tokens/s over plain tokens/s, wall-clock, per block
        self._last: tuple[float, float] | None = None
        self._block_wall = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = _now()
        if self._last is not None:
            for i in (0, 1):
                self.zoo[i] += now[i] - self._last[i]
            self._block_wall += now[0] - self._last[0]
            self.zoo_steps += 1
        if batch_idx + 1 < self.warmup:
            return
        if batch_idx + 1 == self.warmup:  # the plain loop's warm-up, then the first timed block of the Trainer
            for _ in range(self.warmup):
                next(self.plain_steps)
        elif (batch_idx + 1 - self.warmup) % self.block == 0:
            t0 = _now()
            for _ in range(self.block):
                next(self.plain_steps)
            t1 = _now()
            for i in (0, 1):
                self.plain[i] += t1[i] - t0[i]
            self.plain_steps_done += self.block
            self.block_ratios.append((t1[0] - t0[0]) / self._block_wall)
            self._block_wall = 0.0
        self._last = _now()


def measure(
    path: Path,
    ids: torch.Tensor,
    vocab: int,
    size: Size,
    warmup: int,
    blocks: int,
    block: int,
    logged: bool,
    root: Path,
) -> Interleaved:
    """``blocks`` alternating blocks of ``block`` steps of train.py's run and of the plain loop, after ``warmup``
    steps of each."""
    torch.manual_seed(0)
    model = PlainLM(vocab, size).train()
    windows = StreamBatches(ids, size.batch, size.bptt)
    total = warmup + blocks * block  # the same schedule as the Trainer's run: cosine over its max_steps
    schedule = recipe_schedule(total, int(WARMUP_EPOCHS * len(windows)))
    clock = Interleaved(plain_training(model, iter(windows), schedule), warmup, block)

    class BenchCLI(ZooCLI):
        def _default_callbacks(self, *args, **kwargs):
            return [*super()._default_callbacks(*args, **kwargs), clock]

    args = ["fit", "--config", str(Path(__file__).resolve().parent.parent / "configs/lstm_lm.tinyshakespeare.yaml")]
    args += ["--data.path", str(path), "--data.batch_size", str(size.batch), "--data.seq_len", str(size.bptt)]
    args += ["--model.embed_dim", str(size.embed), "--model.hidden_size", str(size.hidden)]
    args += ["--model.num_layers", str(size.layers), "--model.bptt", str(size.bptt)]
    args += ["--trainer.max_steps", str(total), "--trainer.accelerator", "cpu"]
    args += ["--run_root", str(root)]
    if logged:
        args += ["--trainer.logger", "CSVLogger"]
    else:
        args += ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
        args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        BenchCLI(
            None,
            None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            args=rewrite_argv(args),
            auto_configure_optimizers=False,
            seed_everything_default=0,
        )  # as zoo.cli.train._run builds it
    os.environ.pop(RUN_DIR_ENV, None)
    if clock.zoo_steps != clock.plain_steps_done or clock.zoo_steps != blocks * block:
        raise RuntimeError(
            f"timed {clock.zoo_steps} train.py and {clock.plain_steps_done} plain steps, not {blocks * block} each"
        )
    return clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--blocks", type=int, default=None, help="alternating blocks of each (default: per size)")
    ap.add_argument("--block", type=int, default=None, help="steps per block (default: per size)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each before the first block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--logged", nargs="*", default=["small"], choices=list(SIZES), help="sizes also timed with a logger and bar"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        path, what = text_file(Path(tmp))
        dm = CharLMDataModule(str(path))
        with contextlib.redirect_stderr(io.StringIO()):
            dm.setup("fit")
        ids, vocab = dm.splits["train"], len(dm.vocab)
        print(header("LanguageModel through train.py's Trainer against a plain nn.LSTM loop (tokens/s)"))
        print(f"{what}: {len(ids):,} training tokens, vocabulary {vocab}")
        print("ratio: train.py tokens/s over the plain loop's (wall clock; of CPU time; per block, min-max)")
        print(
            f"{'size: embed/hidden/layers, bptt x batch':<44} {'blocks':>7} {'plain tok/s':>11} {'train.py':>8} "
            f"{'ratio':>5} {'CPU':>5} {'blocks':>9}"
        )
        for key in args.sizes:
            size = SIZES[key]
            blocks, block = args.blocks or size.blocks, args.block or size.block
            if args.warmup + blocks * block > len(StreamBatches(ids, size.batch, size.bptt)):
                sys.exit(f"{key}: {args.warmup + blocks * block} steps need more text than one epoch of {path}")
            for logged in (False, True) if key in args.logged else (False,):
                c = measure(path, ids, vocab, size, args.warmup, blocks, block, logged, Path(tmp))
                tokens = size.batch * size.bptt * c.zoo_steps
                plain, zoo = tokens / c.plain[0], tokens / c.zoo[0]
                cpu = c.plain[1] / c.zoo[1]
                label = f"{key}: {size.embed}/{size.hidden}/{size.layers}, {size.bptt} x {size.batch}"
                label += " (logger, bar)" if logged else ""
                spread = f"{min(c.block_ratios):.2f}-{max(c.block_ratios):.2f}"
                row = f"{label:<44} {f'{blocks}x{block}':>7} {plain:11,.0f} {zoo:8,.0f} {zoo / plain:5.2f} {cpu:5.2f}"
                print(f"{row} {spread:>9}")


if __name__ == "__main__":
    main()
