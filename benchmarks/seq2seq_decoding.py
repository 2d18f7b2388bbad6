"""Decoding speed of a seq2seq model on Multi30k's test sources: greedy and beam search, batched over sentences,
against the same beam search run one sentence at a time (the reference, in the same run).

    python benchmarks/seq2seq_decoding.py          # the published seq2seq_gru_attn.multi30k_de_en
    python benchmarks/seq2seq_decoding.py --checkpoint runs/.../best.ckpt --sentences 200

Prints sentences per second and ratios; absolute figures depend on the CPU (compare ratios)."""

from __future__ import annotations

import argparse
import time

import torch

import zoo
from datamodules import default_data_dir
from datamodules.translation import TranslationDataModule


def load(args) -> zoo.tasks.Seq2Seq:
    if args.checkpoint:
        return zoo.tasks.Seq2Seq.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    return zoo.load_pretrained(args.weights)


def timed(fn, sentences: list[str], batch: int) -> tuple[float, list]:
    out, t0 = [], time.perf_counter()
    for i in range(0, len(sentences), batch):
        res = fn(sentences[i : i + batch])
        out.extend(res)
    return len(sentences) / (time.perf_counter() - t0), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="seq2seq_gru_attn.multi30k_de_en")
    p.add_argument("--checkpoint")
    p.add_argument("--data_dir", default=str(default_data_dir()))
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--beam", type=int, default=5)
    args = p.parse_args()
    model = load(args)
    pairs = TranslationDataModule(data_dir=args.data_dir).load_pairs()["test"][: args.sentences]
    sources = [a for a, _ in pairs]
    model.translate(sources[:8], beam=args.beam)  # warm-up
    rows = [
        ("greedy, batched", lambda s: model.translate(s, beam=1), args.batch),
        (f"beam {args.beam}, batched", lambda s: model.translate(s, beam=args.beam), args.batch),
        (f"beam {args.beam}, one sentence at a time", lambda s: model.translate(s, beam=args.beam), 1),
    ]
    speeds = {}
    print(f"{len(sources)} sentences, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, fn, batch in rows:
        speeds[name], _ = timed(fn, sources, batch)
    ref = speeds[rows[-1][0]]
    for name, sps in speeds.items():
        print(f"{name:40s} {sps:8.1f} sentences/s  {sps / ref:5.1f}x")


if __name__ == "__main__":
    main()
