"""W&B pictures of the taggers (``Tagger``): a bar chart of the score of each type over the whole validation split
(span F1 per entity type for chunk tags such as BIO, scored as the task scores ``val_f1_<type>``; token accuracy
per gold tag for POS-style tags), and the first validation sentences with their gold and predicted tags, the
errors marked (a table, and the same sentences coloured in HTML).

The predictions are the ones the task's own validation step decoded (it returns them), so the chart costs no
extra forward pass. Under DDP the chart scores rank 0's share of the split (media are drawn on rank 0 alone)."""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

import lightning as L
import torch

from datamodules.contract import PAD_ID, UNK_ID
from zoo.callbacks.media._base import ValidationMedia
from zoo.tasks.spans import SpanF1, chunks

__all__ = ["TaggingSamples", "callbacks", "render"]

Sentence = tuple[list[str], list[str], list[str]]  # (words, gold tags, predicted tags)


class TaggingSamples(ValidationMedia):
    """Logs ``media/f1_per_type`` (chunk tags) or ``media/accuracy_per_tag`` (other tags), ``media/sentences``
    (a table ``sentence, gold, predicted, errors, marked``) and ``media/sentences_html``."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        tags = list(pl_module.hparams.tags)
        self.spans = SpanF1(tags, sync_on_compute=False) if pl_module.chunked else None
        self.total, self.correct = Counter(), Counter()  # per gold tag
        self.sentences: list[Sentence] = []

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not isinstance(outputs, torch.Tensor):  # a task that does not return its predictions
            return
        _, chars, lengths, tags = batch
        pred, tags, lengths = outputs.cpu(), tags.cpu(), lengths.cpu()
        if self.spans is not None:
            self.spans.update(pred.clamp(min=0), tags.clamp(min=0), lengths)
        names, char_names = pl_module.hparams.tags, pl_module.hparams.chars
        for i, (p, g, n) in enumerate(zip(pred.tolist(), tags.tolist(), lengths.tolist())):
            gold, predicted = [names[t] for t in g[:n]], [names[t] for t in p[:n]]
            self.total.update(gold)
            self.correct.update(a for a, b in zip(gold, predicted) if a == b)
            if len(self.sentences) < self.samples:
                words = [_word(row, char_names) for row in chars[i, :n].tolist()]
                self.sentences.append((words, gold, predicted))
        self.batches = [None]  # the base draws when collect() kept something: here the counts above

    def media(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import wandb

        out: dict[str, Any] = {}
        if self.spans is not None:
            scores = self.spans.compute()
            data = [[t, float(scores[f"f1_{t}"])] for t in self.spans.types]
            table = wandb.Table(columns=["type", "f1"], data=data)
            out["f1_per_type"] = wandb.plot.bar(table, "type", "f1", title="span F1 per type (validation)")
        else:
            data = [[t, self.correct[t] / n] for t, n in self.total.most_common()]
            table = wandb.Table(columns=["tag", "accuracy"], data=data)
            title = "accuracy per gold tag (validation)"
            out["accuracy_per_tag"] = wandb.plot.bar(table, "tag", "accuracy", title=title)
        chunked = self.spans is not None
        rows = [
            [" ".join(w), render(w, g, chunked), render(w, p, chunked), _errors(g, p), marked(w, g, p)]
            for w, g, p in self.sentences
        ]
        out["sentences"] = wandb.Table(columns=["sentence", "gold", "predicted", "errors", "marked"], data=rows)
        out["sentences_html"] = wandb.Html(_html(self.sentences))
        return out


def _word(char_ids: list[int], char_names: list[str]) -> str:
    """A word spelt from its character ids (as far as the data cut it; unknown characters as U+FFFD)."""
    return "".join("\ufffd" if c == UNK_ID else char_names[c] for c in char_ids if c != PAD_ID)


def _errors(gold: list[str], predicted: list[str]) -> int:
    return sum(a != b for a, b in zip(gold, predicted))


def render(words: list[str], tags: list[str], chunked: bool) -> str:
    """Chunk tags as bracketed spans (``[EU]ORG rejects [German]MISC .``), other tags as ``word/TAG``."""
    if not chunked:
        return " ".join(f"{w}/{t}" for w, t in zip(words, tags))
    out, end = [], 0
    for kind, a, b in chunks(tags):
        out += words[end:a] + [f"[{' '.join(words[a:b])}]{kind}"]
        end = b
    return " ".join(out + words[end:])


def marked(words: list[str], gold: list[str], predicted: list[str]) -> str:
    """The sentence with each wrongly tagged word as ``word{gold→predicted}``."""
    return " ".join(w if g == p else f"{w}{{{g}→{p}}}" for w, g, p in zip(words, gold, predicted))


def _html(sentences: list[Sentence]) -> str:
    """Each word with its predicted tag below it; wrong ones on red with the gold tag in their tooltip."""
    lines = []
    for words, gold, predicted in sentences:
        cells = []
        for w, g, p in zip(words, gold, predicted):
            style = "background:#f8c8c8" if g != p else ""
            cells.append(
                f'<span style="{style};padding:1px 3px;margin:1px;display:inline-block;text-align:center" '
                f'title="gold {html.escape(g)}, predicted {html.escape(p)}">{html.escape(w)}'
                f"<br><small>{html.escape(p)}</small></span>"
            )
        lines.append(f"<p style='font-family:sans-serif'>{''.join(cells)}</p>")
    return "\n".join(lines)


def callbacks(model: L.LightningModule, every_n_epochs: int, samples: int) -> list[L.Callback]:
    return [TaggingSamples(every_n_epochs, samples)]
