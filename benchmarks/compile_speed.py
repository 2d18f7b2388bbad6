"""``--model.compile true`` against eager, per family: training steps/s of each published recipe's task through a
Lightning Trainer (the path of ``train.py``), on synthetic batches shaped as the recipe's data (image batches of
128; names, sentences and translations of random lengths drawn afresh for every batch, as the length-bucketed
loaders give them, so that recompiles for new lengths are paid where they happen).

One fit per family with ``compile=True``; its compiled call is switched off and on in interleaved windows of the
same model (a warm-up of each first), so the two sides share the process, the weights' trajectory and any drift
in the machine's load. Per family: eager and compiled steps/s, their ratio, the compile cost (the compiled
warm-up's time beyond the eager warm-up's, from a fresh inductor cache) and the graphs dynamo compiled (more than
a few means recompiles for new shapes or graph breaks).

    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py                     # every family, ~4 min on 1 thread
    python benchmarks/compile_speed.py --families resnet20 lenet5 --threads 2
    python benchmarks/compile_speed.py --window 8 --rounds 3                 # longer, steadier figures
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import header, quiet_lightning, quiet_trainer  # noqa: E402

from zoo.tasks.image import ImageClassifier  # noqa: E402
from zoo.tasks.language_model import LanguageModel  # noqa: E402
from zoo.tasks.sequence import SequenceClassifier  # noqa: E402
from zoo.tasks.tagging import Tagger  # noqa: E402
from zoo.tasks.translation import Seq2Seq  # noqa: E402


@dataclass
class Family:
    """One recipe's training step: its task built from ``model(compile)``, a fresh batch from ``batch(generator)``,
    the trainer's precision, and the default window (batches per eager or compiled stretch; warm-up as long)."""

    model: Callable[[bool], L.LightningModule]
    batch: Callable[[torch.Generator], tuple]
    precision: str = "32-true"
    window: int = 4
    note: str = ""


def _lengths(g: torch.Generator, n: int, low: int, high: int) -> torch.Tensor:
    """``n`` lengths in [low, high], the longest first-bucket-like: one batch of a length-bucketed loader holds
    similar lengths, so they are drawn around one length per batch."""
    centre = int(torch.randint(low, high + 1, (1,), generator=g))
    spread = torch.randint(-2, 3, (n,), generator=g)
    return (centre + spread).clamp(low, high)


def _ids(g: torch.Generator, lengths: torch.Tensor, vocab: int, first: int = 2) -> torch.Tensor:
    """Padded ids (B, max length): random tokens in [first, vocab) up to each length, 0 (padding) after."""
    x = torch.randint(first, vocab, (len(lengths), int(lengths.max())), generator=g)
    return x.masked_fill(torch.arange(x.shape[1])[None] >= lengths[:, None], 0)


def _image(arch: str, c: bool, channels_last: bool = True) -> ImageClassifier:
    # the recipe's optimiser (configs/resnet20.cifar10.yaml); bf16 autocast and channels_last on both sides
    return ImageClassifier(arch=arch, num_classes=10, lr=0.1, weight_decay=5e-4, channels_last=channels_last, compile=c)


def _image_batch(g: torch.Generator) -> tuple:
    return torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)


NAME_CHARS = ["<pad>", "<unk>", *map(chr, range(ord("a"), ord("z") + 1)), *map(chr, range(ord("A"), ord("Z") + 1))]
LANGUAGES = [f"lang{i}" for i in range(18)]


def _classifier(c: bool) -> SequenceClassifier:
    # configs/gru_classifier.names.yaml: a 2-layer bidirectional GRU of 256 over characters, batches of 64
    return SequenceClassifier(
        arch="gru_classifier",
        vocab=NAME_CHARS,
        classes=LANGUAGES,
        embed_dim=64,
        hidden_size=256,
        num_layers=2,
        bidirectional=True,
        dropout=0.5,
        label_smoothing=0.1,
        compile=c,
    )


def _classifier_batch(g: torch.Generator) -> tuple:
    lengths = _lengths(g, 64, 3, 16)
    return _ids(g, lengths, len(NAME_CHARS)), lengths, torch.randint(0, len(LANGUAGES), (64,), generator=g)


TAGS = ["O"] + [f"{p}-{t}" for t in ("PER", "LOC", "ORG", "MISC") for p in "BIES"]  # BIOES over CoNLL's 4 types
WORDS, CHARS = 20_000, 80


def _tagger(c: bool) -> Tagger:
    # configs/bilstm_crf.conll2003.yaml: 2 BiLSTMs of 200, a character BiLSTM of 50+50, a BIOES-constrained CRF
    return Tagger(
        arch="bilstm_crf",
        words=["<pad>", "<unk>", *(f"w{i}" for i in range(WORDS - 2))],
        chars=["<pad>", "<unk>", *(chr(33 + i) for i in range(CHARS - 2))],
        tags=TAGS,
        tag_scheme="BIOES",
        word_dim=100,
        hidden_size=200,
        num_layers=2,
        dropout=0.5,
        net_kwargs={"word_dropout": 0.1, "casing_dim": 8, "char_dim": 50, "char_hidden": 50},
        grad_clip=5.0,
        compile=c,
    )


def _tagger_batch(g: torch.Generator) -> tuple:
    lengths = _lengths(g, 32, 4, 40)
    words = _ids(g, lengths, WORDS)
    B, T = words.shape
    word_len = torch.randint(1, 11, (B, T), generator=g) * (words > 0)  # characters per word, 0 for padding
    chars = torch.randint(2, CHARS, (B, T, int(word_len.max())), generator=g)
    chars = chars.masked_fill(torch.arange(chars.shape[2]) >= word_len[..., None], 0)
    tags = torch.randint(0, len(TAGS), (B, T), generator=g).masked_fill(words == 0, -1)
    return words, chars, lengths, tags


LM_VOCAB = 65  # Tiny Shakespeare's characters


def _lm(c: bool) -> LanguageModel:
    # configs/lstm_lm.tinyshakespeare.yaml: 2 LSTM layers of 512, 64 streams of 128 characters, bptt 128
    vocab = ["<unk>", *(chr(32 + i) for i in range(LM_VOCAB - 1))]
    return LanguageModel(arch="lstm_lm", vocab=vocab, embed_dim=128, hidden_size=512, num_layers=2, dropout=0.3,
                         bptt=128, compile=c)  # fmt: skip


def _lm_batch(g: torch.Generator) -> tuple:
    x = torch.randint(0, LM_VOCAB, (64, 129), generator=g)
    return x[:, :-1], x[:, 1:]


SRC_VOCAB, TGT_VOCAB = 8_000, 6_300  # Multi30k de -> en, tokens seen twice in train


def _spec(n: int) -> dict:
    return {"tokenizer": "word", "pattern": r"\w+|[^\w\s]", "vocab": ["<pad>", "<unk>", "<s>", "</s>"] +
            [f"t{i}" for i in range(n - 4)]}  # fmt: skip


def _seq2seq(c: bool) -> Seq2Seq:
    # configs/seq2seq_gru_attn.multi30k_de_en.yaml: bidirectional GRU encoder of 256, GRU decoder, general attention
    return Seq2Seq(arch="seq2seq_gru_attn", src_spec=_spec(SRC_VOCAB), tgt_spec=_spec(TGT_VOCAB), embed_dim=256,
                   hidden_size=256, bidirectional=True, dropout=0.3, label_smoothing=0.1, compile=c)  # fmt: skip


def _seq2seq_batch(g: torch.Generator) -> tuple:
    src_len = _lengths(g, 64, 5, 30)
    tgt_len = (src_len + torch.randint(-2, 3, (64,), generator=g)).clamp(3, 32) + 2  # <s> ... </s>
    src = _ids(g, src_len, SRC_VOCAB, first=4)
    tgt = _ids(g, tgt_len, TGT_VOCAB, first=4)
    tgt[:, 0] = 2  # BOS
    tgt[torch.arange(64), tgt_len - 1] = 3  # EOS
    return src, src_len, tgt, torch.arange(64)


FAMILIES = {
    "resnet20": Family(lambda c: _image("resnet20", c), _image_batch, "bf16-mixed", note="bf16-mixed, channels_last"),
    "lenet5": Family(lambda c: _image("lenet5", c), _image_batch, "bf16-mixed", note="bf16-mixed, channels_last"),
    "gru_classifier": Family(_classifier, _classifier_batch, note="names, lengths 3-16"),
    "bilstm_crf": Family(_tagger, _tagger_batch, note="CoNLL-2003, lengths 4-40"),
    "lstm_lm": Family(_lm, _lm_batch, window=2, note="64 x 128 characters"),
    "seq2seq_gru_attn": Family(_seq2seq, _seq2seq_batch, note="Multi30k, lengths 5-30"),
    # not run by default: ResNet-20 without the recipe's bf16 and channels_last (where compile helps most on a CPU)
    "resnet20_fp32": Family(lambda c: _image("resnet20", c, channels_last=False), _image_batch, note="fp32, NCHW"),
}
DEFAULT = [name for name in FAMILIES if name != "resnet20_fp32"]


class _Batches(Dataset):
    """``n`` batches drawn from one seed: the eager and compiled runs train on the same ones."""

    def __init__(self, make: Callable[[torch.Generator], tuple], n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.batches = [make(g) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple:
        return self.batches[i]


class _Alternate(L.Callback):
    """Times each training batch (forward, backward, optimiser step; loading excluded) while switching the compiled
    net's call on and off: ``warmup`` eager batches, ``warmup`` compiled ones (compiling), then ``rounds`` of
    ``window`` eager and ``window`` compiled batches. Interleaved windows of one model in one process: a load that
    drifts (other processes) weighs on both sides alike."""

    def __init__(self, warmup: int, window: int, rounds: int) -> None:
        self.plan = [False] * warmup + [True] * warmup + ([False] * window + [True] * window) * rounds
        self.warmup = warmup
        self.times: dict[bool, list[float]] = {False: [], True: []}

    def on_train_start(self, trainer, pl_module) -> None:
        # the compiled call that --model.compile true set in configure_model (zoo.tasks._compile), kept to switch
        self.compiled = pl_module.net._compiled_call_impl
        if self.compiled is None:
            raise RuntimeError("the net was not compiled: configure_model did not run compile_net")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.mode = self.plan[batch_idx]
        pl_module.net._compiled_call_impl = self.compiled if self.mode else None
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times[self.mode].append(time.perf_counter() - self._t)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run(family: Family, warmup: int, window: int, rounds: int) -> dict:
    """One fit of the family's task with ``compile=True``, its compiled call switched on and off (``_Alternate``):
    eager and compiled steps/s over the measured windows, the compile cost and the graphs dynamo compiled."""
    L.seed_everything(0, verbose=False)
    model = family.model(True)
    clock = _Alternate(warmup, window, rounds)
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(clock.plan),
        precision=family.precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    graphs = _graphs()
    loader = DataLoader(_Batches(family.batch, len(clock.plan)), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    (eager_warm, eager), (comp_warm, comp) = ((t[:warmup], t[warmup:]) for t in (clock.times[False], clock.times[True]))
    return {
        "eager": len(eager) / sum(eager),
        "compiled": len(comp) / sum(comp),
        "compile_s": sum(comp_warm) - sum(eager_warm),
        "graphs": _graphs() - graphs,
        "windows": [
            (mode, window / sum(clock.times[mode][warmup + i * window : warmup + (i + 1) * window]))
            for i in range(rounds)
            for mode in (False, True)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=DEFAULT, help="default: all but "
                   "resnet20_fp32")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--window", type=int, help="batches per eager or compiled stretch, and of each warm-up (default: "
                   "per family, 4; 2 for the LM)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="eager + compiled windows measured (default 2)")
    p.add_argument("--verbose", action="store_true", help="print each window's steps/s")
    p.add_argument("--keep-cache", action="store_true", help="use inductor's disk cache (default: a fresh one, so "
                   "that the compile time is a first run's)")  # fmt: skip
    args = p.parse_args(argv)
    if (args.window is not None and args.window < 2) or args.rounds < 1:
        p.error("--window must be >= 2 (a compiled run recompiles once for its second shape) and --rounds >= 1")
    torch.set_num_threads(args.threads)
    if not args.keep_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_speed_")
    quiet_lightning()
    for name in ("torch.utils.cpp_extension", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)  # recompile warnings: the graphs column counts them
    warnings.filterwarnings("ignore")
    print(header("torch.compile vs eager, training steps/s through a Lightning Trainer on synthetic batches"))
    print(f"{'family':<18} {'data':<28} {'eager/s':>8} {'compiled/s':>10} {'ratio':>6} {'compile s':>9} {'graphs':>6}")
    start = time.perf_counter()
    for name in args.families:
        fam = FAMILIES[name]
        torch._dynamo.reset()  # each family compiles from scratch (in memory; the disk cache is fresh unless kept)
        try:
            r = run(fam, args.window or fam.window, args.window or fam.window, args.rounds)
        except Exception as e:  # noqa: BLE001 (a family that does not compile is a result too)
            print(f"{name:<18} {fam.note:<28} failed: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
            continue
        print(
            f"{name:<18} {fam.note:<28} {r['eager']:>8.2f} {r['compiled']:>10.2f} {r['compiled'] / r['eager']:>5.2f}x "
            f"{r['compile_s']:>9.1f} {r['graphs']:>6}",
            flush=True,
        )
        if args.verbose:
            print("    windows: " + ", ".join(f"{'compiled' if c else 'eager'} {v:.2f}" for c, v in r["windows"]))
    cache = "inductor's disk cache" if args.keep_cache else "a fresh inductor cache"
    print(
        "(one fit per family with --model.compile true, its compiled call switched off and on in interleaved windows "
        "after a warm-up of each; compile s: the compiled warm-up's time beyond the eager one's, with "
        f"{cache}; graphs: compiled by dynamo, recompiles for new shapes included; total "
        f"{time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
