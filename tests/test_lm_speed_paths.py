"""The LM throughput benchmark (benchmarks/lm_throughput.py) compares like with like: its plain PyTorch loop
trains what ``LanguageModel`` trains through a Trainer (same losses, same weights after the same steps), and its
interleaved timing gives both the same number of steps."""

import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

import zoo
from datamodules.charlm import CharLMDataModule, StreamBatches
from zoo.cli.file_loggers import RUN_DIR_ENV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lm_throughput import PlainLM, Size, measure, plain_training, text_file  # noqa: E402

TEXT = "".join(f"{w} the quick brown fox jumps over the lazy dog.\n" for w in ("ROMEO:", "JULIET:", "NURSE:") * 40)
TINY = Size(embed=8, hidden=16, layers=2, bptt=8, batch=4, blocks=2, block=2)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def copy_into_plain(net: torch.nn.Module, plain: PlainLM) -> None:
    """The zoo net's weights (one ``nn.LSTM`` module per layer) into the plain model (one multi-layer ``nn.LSTM``)."""
    with torch.no_grad():
        plain.embedding.weight.copy_(net.encoder.embedding.weight)
        for i, layer in enumerate(net.encoder.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(plain.lstm, f"{name}_l{i}").copy_(getattr(layer, f"{name}_l0"))
        plain.head.load_state_dict(net.head.state_dict())


def test_the_plain_loop_trains_what_the_language_model_trains(text, tmp_path):
    """Same init, same token stream, no dropout or resets, a constant learning rate: LanguageModel through a
    Trainer (two truncated-BPTT windows per batch, clipped AdamW steps, the state carried) and the benchmark's plain
    loop (one window per step) give the same losses and the same weights after 8 optimiser steps."""
    dm = CharLMDataModule(str(text), batch_size=TINY.batch, seq_len=2 * TINY.bptt, eval_batch_size=2)
    dm.setup("fit")
    hp = dict(dropout=0.0, reset_prob=0.0, schedule="constant", weight_decay=0.0, lr=1e-2, grad_clip=0.05)
    torch.manual_seed(0)
    model = zoo.create_model(
        "lstm_lm", vocab=list(dm.vocab.itos), embed_dim=TINY.embed, hidden_size=TINY.hidden, bptt=TINY.bptt, **hp
    )
    plain = PlainLM(len(dm.vocab), TINY, dropout=0.0)
    copy_into_plain(model.net, plain)
    zoo_losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            zoo_losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    quiet_trainer(tmp_path, max_steps=8, callbacks=[Record()], limit_val_batches=0).fit(model, dm)
    windows = StreamBatches(dm.splits["train"], TINY.batch, TINY.bptt)
    run = plain_training(plain, iter(windows), lr=1e-2, weight_decay=0.0, clip=0.05)
    plain_losses = [float(next(run)) for _ in range(8)]
    assert model.global_step == 8 and len(zoo_losses) == 4
    pairs = [(a + b) / 2 for a, b in zip(plain_losses[::2], plain_losses[1::2])]  # a batch's loss: its windows' mean
    assert zoo_losses == pytest.approx(pairs, abs=1e-5)
    assert plain_losses[-1] < plain_losses[0]  # it learnt something, so equal weights are not equal by inaction
    mine = PlainLM(len(dm.vocab), TINY, dropout=0.0)
    copy_into_plain(model.net, mine)
    for (name, a), b in zip(plain.state_dict().items(), mine.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_the_benchmark_times_as_many_steps_of_each(tmp_path, monkeypatch):
    """train.py's run (with its logger, checkpoints and progress bar) and the plain loop alternate in blocks and each
    is timed over the same number of steps."""
    for var in (RUN_DIR_ENV, "PL_GLOBAL_SEED"):  # what the in-process train.py sets goes away with the test
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "nothing"))  # the synthetic text
    path, what = text_file(tmp_path)
    assert what.startswith("synthetic")
    dm = CharLMDataModule(str(path))
    dm.setup("fit")
    clock = measure(path, dm.splits["train"], len(dm.vocab), TINY, 1, TINY.blocks, TINY.block, True, tmp_path)
    assert clock.zoo_steps == clock.plain_steps_done == 4 and len(clock.block_ratios) == 2
    assert min(clock.zoo + clock.plain) > 0 and RUN_DIR_ENV not in os.environ
