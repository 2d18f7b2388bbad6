"""W&B pictures of the language models (``LanguageModel``): text sampled at each logged validation end from a few
fixed prompts at fixed seeds, so that successive epochs show the same draws from a model that learns.

The prompts are the first tokens of a few of the validation split's streams in its first batch (the same every
epoch, and there for any corpus); each is continued at a low and a normal temperature with the seed of its row,
through the task's own ``generate``, whose sampling draws from a generator of its own: the run's global random
state, and so its training, is the same with the media on or off."""

from __future__ import annotations

from typing import Any

import lightning as L

from zoo.callbacks.media._base import ValidationMedia

__all__ = ["LanguageModelSamples", "callbacks"]

PROMPTS = 4  # prompts at most (fewer with --wandb.media_samples below it)
TEMPERATURES = (0.5, 1.0)
# by tokeniser (datamodules.contract.TOKENIZERS): (tokens of a prompt, tokens sampled after it)
LENGTHS = {"char": (24, 160), "whitespace": (6, 40)}


class LanguageModelSamples(ValidationMedia):
    """Logs ``media/samples``: a table ``epoch, prompt, temperature, sample`` (the sample without its prompt), one
    row per prompt and temperature, at most ``min(samples, PROMPTS) * len(TEMPERATURES)`` rows."""

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self.batches:
            self.batches.append(batch)

    def prompts(self, pl_module: L.LightningModule) -> list[str]:
        """The first tokens of up to ``samples`` (and ``PROMPTS``) streams, spread over the first batch."""
        h = pl_module.hparams
        x = self.batches[0][0]  # (B, T)
        n, k = LENGTHS[h.tokenizer][0], min(self.samples, PROMPTS, x.shape[0])
        rows = sorted({round(i * (x.shape[0] - 1) / max(k - 1, 1)) for i in range(k)})
        sep = "" if h.tokenizer == "char" else " "
        return [sep.join(h.vocab[t] for t in x[r, :n].tolist()) for r in rows]

    def media(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        import wandb

        new = LENGTHS[pl_module.hparams.tokenizer][1]
        rows = []
        for seed, prompt in enumerate(self.prompts(pl_module)):
            for temperature in TEMPERATURES:
                text = pl_module.generate(prompt, max_new=new, temperature=temperature, seed=seed)
                rows.append([trainer.current_epoch, prompt, temperature, text[len(prompt) :]])
        return {"samples": wandb.Table(columns=["epoch", "prompt", "temperature", "sample"], data=rows)}


def callbacks(model: L.LightningModule, every_n_epochs: int, samples: int) -> list[L.Callback]:
    return [LanguageModelSamples(every_n_epochs, samples)]
