"""W&B pictures of the translators (``Seq2Seq``): a few validation sentences with their reference and the model's
greedy and beam translations, and where the decoder looked (attention heatmaps: source tokens on x, output tokens
on y) for the first of them. The same sentences every epoch (the first of the validation split), so the tables of
successive epochs read as the model learning; models without attention get the table alone."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from zoo.callbacks.media._base import ValidationMedia
from zoo.callbacks.media._plots import attention_heatmap, to_pixels

__all__ = ["TranslationSamples", "callbacks"]

HEATMAPS = 3  # sentences drawn as attention heatmaps (of the ``samples`` in the table)


class TranslationSamples(ValidationMedia):
    """Logs ``media/translations`` (a table ``source, reference, greedy, beam``: the beam of the task's test-time
    search, ``beam`` and ``alpha``) and ``media/attention`` (heatmaps of the greedy translation's attention, the
    decoding that ``val_bleu`` scores). Costs one greedy and one beam decoding of ``samples`` sentences."""

    def media(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import wandb

        h, net = pl_module.hparams, pl_module.net
        src_codec, tgt_codec = pl_module.src_codec, pl_module.tgt_codec
        rows, images, left = [], [], self.samples
        with torch.no_grad():
            for src, lengths, tgt, index in self.batches:
                src, lengths, tgt, index = src[:left], lengths[:left], tgt[:left], index[:left]
                greedy = net.greedy(src, lengths, h.max_len_a, h.max_len_b)
                beams = net.beam_search(src, lengths, h.beam, h.alpha, h.max_len_a, h.max_len_b)
                refs = pl_module.references("val", tgt, index)
                for row, n, ref, g, b in zip(src.tolist(), lengths.tolist(), refs, greedy, beams):
                    source = src_codec.decode(row[:n])
                    rows.append([source, ref, tgt_codec.decode(g.tokens), tgt_codec.decode(b[0].tokens)])
                    if g.attention is not None and len(images) < HEATMAPS:
                        x = [src_codec.itos[i] for i in row[:n]]
                        y = [tgt_codec.itos[i] for i in g.tokens] + ["<eos>"]
                        title = f"{_short(source)}\n-> {_short(rows[-1][2])}"
                        fig = attention_heatmap(g.attention.numpy(), x, y, title=title)
                        images.append(wandb.Image(to_pixels(fig), caption=source))
                left -= len(src)
                if left <= 0:
                    break
        columns = ["source", "reference", "greedy", "beam"]
        out: dict[str, Any] = {"translations": wandb.Table(columns=columns, data=rows)}
        if images:
            out["attention"] = images
        return out


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def callbacks(model: L.LightningModule, every_n_epochs: int, samples: int) -> list[L.Callback]:
    return [TranslationSamples(every_n_epochs, samples)]
