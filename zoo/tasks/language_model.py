"""Language modelling over the recurrent nets of ``zoo.nets.recurrent``: next-token prediction with stateful
truncated BPTT, and sampling."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from datamodules.contract import TOKENIZERS, UNK, Tokenised, settings
from zoo._registry import get_entry
from zoo.tasks._optim import check_choice
from zoo.tasks._text import TextTask, given_texts, warn_unknown

__all__ = ["LanguageModel"]


class LanguageModel(TextTask):
    """Next-token language model trained with stateful truncated backpropagation through time.

    The hidden state is carried from one batch to the next (the DataModule gives contiguous windows of
    ``batch_size`` parallel streams) and detached every ``bptt`` tokens: one optimiser step per ``bptt`` tokens,
    gradients never cross a boundary. The state is reset at each epoch start and saved in checkpoints (every
    rank's under DDP), so a run stopped mid-epoch resumes with it. Validation and test carry their own state
    through their split. Reported: nats per token (``val_loss``), bits per token (``val_bpc``) and perplexity.

    Args:
        arch: ``rnn_lm``, ``lstm_lm`` or ``gru_lm``.
        vocab, tokenizer: filled from the DataModule when not given.
        embed_dim, hidden_size, num_layers, dropout, tie_weights: the net; ``net_kwargs`` for the rest.
        pretrained: published weights ``name.tag`` to start from; their vocabulary comes with them (data with
            another vocabulary: known tokens keep their vectors, the rest start fresh).
        freeze, unfreeze_epoch, backbone_lr_mult: fine-tuning, the same in every task (see :class:`Task`).
        bptt: tokens per truncated-BPTT step (default: the whole window of a batch).
        grad_clip: gradient-norm clipping, applied at every step (on in every recurrent recipe).
        reset_prob: chance that a stream's carried state is zeroed before a training batch. Without it the model
            only ever sees a zero state at the start of an epoch, and text generated from a fresh state (a
            prompt) is poor; a few resets per epoch teach it to start anywhere. Drawn from a generator seeded
            by the step, so a resumed run draws the same resets.
        compile: ``torch.compile`` the net while fitting (True / False; None: the family's default, off).
    """

    monitor = ("val_loss", "min")

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        return f"{metrics[f'{split}_loss']:.3f} nats/token"

    remappable = ("vocab",)
    indexed_params = {
        "encoder.embedding.weight": ("vocab", (0,)),
        "head.weight": ("vocab", (0,)),
        "head.bias": ("vocab", (0,)),
    }
    weights_kwargs = (
        "vocab",
        "tokenizer",
        "embed_dim",
        "hidden_size",
        "num_layers",
        "dropout",
        "tie_weights",
        "net_kwargs",
    )

    def __init__(
        self,
        arch: str = "lstm_lm",
        vocab: list[str] | None = None,
        tokenizer: str = "char",
        embed_dim: int = 128,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        net_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        freeze: str | None = None,
        unfreeze_epoch: int | None = None,
        backbone_lr_mult: float = 1.0,
        bptt: int | None = None,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.01,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        grad_clip: float | None = 1.0,
        reset_prob: float = 0.02,
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        check_choice("tokenizer", tokenizer, tuple(TOKENIZERS))
        if bptt is not None and bptt < 1:
            raise ValueError(f"bptt must be >= 1 token; got {bptt}")
        if not 0 <= reset_prob <= 1:
            raise ValueError(f"reset_prob is a probability in [0, 1]; got {reset_prob}")
        self.automatic_optimization = False  # truncated BPTT: several optimiser steps per batch
        self.net: nn.Module | None = None
        self._state = {"train": None, "val": None, "test": None}
        if pretrained:  # the weights bring their architecture and vocabulary
            self.take_weights_kwargs()
        if self.hparams.vocab is not None:
            self._build()

    def _build(self) -> None:
        h = self.hparams
        kwargs = {
            "embed_dim": h.embed_dim,
            "hidden_size": h.hidden_size,
            "num_layers": h.num_layers,
            "dropout": h.dropout,
            "output_dropout": h.dropout,
            "tie_weights": h.tie_weights,
            **(h.net_kwargs or {}),
        }
        self.net = get_entry(h.arch).builder(vocab_size=len(h.vocab), **kwargs)
        if h.pretrained:
            self.load_weights()
        self.stoi = {t: i for i, t in enumerate(h.vocab)}
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()

    def fit_to_data(self, stage: str) -> None:
        dm = self.datamodule  # read as datamodules.contract.LanguageModelData
        itos = getattr(dm.vocab, "itos", None) if isinstance(dm, Tokenised) else None
        if self.net is None:
            if not itos:
                raise ValueError("the model needs a vocabulary: give a DataModule with `vocab` (e.g. --data charlm)")
            self.hparams.vocab = list(itos)
            self.adopt(tokenizer=settings(dm).get("tokenizer", self.hparams.tokenizer))
            self._build()
        else:
            self.check_text_settings(dm)
            if self.differs_from_data({"vocab": itos}):
                self.hparams.vocab = list(itos)
                self._build()
        seq_len = settings(dm).get("seq_len")
        if self.hparams.bptt and seq_len and self.hparams.bptt > seq_len:
            rank_zero_warn(
                f"bptt={self.hparams.bptt} is longer than the data's windows (seq_len={seq_len}): one optimiser step "
                f"per window of {seq_len} tokens. Raise --data.seq_len to backpropagate further."
            )

    # -- the carried state ------------------------------------------------------------------------------------
    def _carry(self, stage: str, state):
        """Keep ``state`` for the next batch, cut from the graph (truncated BPTT's boundary)."""
        self._state[stage] = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def on_train_epoch_start(self) -> None:  # not called when a run resumes mid-epoch: the loaded state stays
        self._state["train"] = None

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = None
        self.val_nll.reset()  # fresh tensors in this loop's grad mode (a validate() before fit() used inference mode)

    def on_test_epoch_start(self) -> None:
        self._state["test"] = None
        self.test_nll.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        state = self._state["train"]
        if state is not None:  # every rank's, gathered: (world, ...) per tensor
            parts = state if isinstance(state, tuple) else (state,)
            checkpoint["carried_state"] = [self.all_gather(s).cpu() for s in parts]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        parts = checkpoint.get("carried_state")
        if not parts:
            return
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer is not None else (1, 0)
        saved_world = parts[0].shape[0] if parts[0].dim() == 4 else 1  # (world, L, B, H) when saved under DDP
        if saved_world != world:  # another number of processes reads other streams: the state does not apply
            rank_zero_warn(f"carried state saved by {saved_world} processes, resuming with {world}: starting at 0")
            return
        mine = [(p[rank] if p.dim() == 4 else p).to(self.device) for p in parts]
        self._state["train"] = tuple(mine) if len(mine) == 2 else mine[0]

    def _reset_some(self, state):
        """``state`` with the streams drawn for a reset (each with ``reset_prob``) set to zero."""
        h = state[0] if isinstance(state, tuple) else state  # (layers, B, H)
        g = torch.Generator().manual_seed(self.global_step * 7919 + self.global_rank)
        keep = (torch.rand(h.shape[1], generator=g) >= self.hparams.reset_prob).to(h.device, h.dtype)[None, :, None]
        return tuple(s * keep for s in state) if isinstance(state, tuple) else state * keep

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, state=None):
        return self.net(tokens, state)  # (B, T, V), state

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T)
        opt, sched = self.optimizers(), self.lr_schedulers()
        step = self.hparams.bptt or x.shape[1]
        total, state = 0.0, self._state["train"]
        if state is not None and (state[0] if isinstance(state, tuple) else state).shape[1] != x.shape[0]:
            state = None  # a batch of another size (the last, shorter split): start afresh
        elif state is not None and self.hparams.reset_prob:
            state = self._reset_some(state)
        for xs, ys in zip(x.split(step, 1), y.split(step, 1)):
            logits, state = self(xs, state)
            loss = F.cross_entropy(logits.float().flatten(0, 1), ys.flatten())
            opt.zero_grad()
            self.manual_backward(loss)
            if self.hparams.grad_clip:
                self.clip_gradients(opt, self.hparams.grad_clip, "norm")
            opt.step()
            self._carry("train", state)
            state = self._state["train"]
            total += loss.detach() * xs.shape[1]
        sched.step()
        loss = total / x.shape[1]
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        logits, state = self(x, self._state[stage])
        self._carry(stage, state)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        metric = getattr(self, f"{stage}_nll")
        metric.update(nll, y.numel())  # weighted by tokens: the split's mean, whatever the batch sizes

    def _eval_epoch_end(self, stage: str) -> None:
        nll = getattr(self, f"{stage}_nll").compute()  # synchronised across ranks by torchmetrics
        self.log(f"{stage}_loss", nll, prog_bar=True)
        self.log(f"{stage}_bpc", nll / math.log(2))
        self.log(f"{stage}_ppl", nll.exp())

    # -- sampling ---------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        max_new: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str:
        """Continue ``prompt`` by ``max_new`` sampled tokens (``temperature`` 0: greedy). ``top_k`` keeps the k most
        likely tokens, ``top_p`` the smallest set whose probability reaches p (nucleus sampling, Holtzman et al.
        2020). The same ``seed`` gives the same text.

        A prompt with no token (``""``; blanks alone for the ``whitespace`` tokeniser) is refused: the model was never
        started from nothing (there is no beginning-of-text token), so it would continue an ``<unk>`` it was not
        given. For the ``char`` tokeniser blanks are text: ``"\\n"`` starts a fresh line."""
        (prompt,) = self._check_prompts(prompt, "prompt")
        return self._sample(prompt, max_new, temperature, top_k, top_p, seed)

    def predict(
        self,
        prompts: str | list[str],
        length: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """``generate`` for each prompt: a list of texts, each its prompt and ``length`` new tokens (a single
        string gives a list of one). Every prompt is sampled with the same ``seed``, so its text does not depend
        on the other prompts. Prompts are checked as in ``generate`` (the message gives the index)."""
        prompts = self._check_prompts(prompts, "prompt")
        return [self._sample(p, length, temperature, top_k, top_p, seed) for p in prompts]

    def _check_prompts(self, prompts: str | list[str], what: str) -> list[str]:
        """The prompts as a list, refusing one with no token to start from (``what`` and its index in the message)
        and warning about one of unknown tokens only."""
        if self.net is None:
            raise RuntimeError("the model has no vocabulary yet: train it, or load a checkpoint / published weights")
        tokenize, unk = TOKENIZERS[self.hparams.tokenizer], self.stoi.get(UNK, 0)
        prompts = given_texts(prompts, what, blank_ok=True)
        for i, prompt in enumerate(prompts):
            tokens = tokenize(prompt)
            if not tokens:
                unit = "character (a line end '\\n' starts a new line)" if self.hparams.tokenizer == "char" else "word"
                raise ValueError(f"{what} {i} ({prompt!r}) has no token: give it at least one {unit} to continue")
            warn_unknown(what, i, [self.stoi.get(t, unk) for t in tokens], unk)
        return prompts

    @torch.no_grad()
    def _sample(
        self, prompt: str, max_new: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None
    ) -> str:
        if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
        g = torch.Generator(device=self.device)
        if seed is not None:
            g.manual_seed(seed)
        out = []
        with self.evaluating():
            logits, state = self(self.encode(prompt)[None].to(self.device))
            for _ in range(max_new):
                last = logits[0, -1].float()
                if temperature == 0:
                    nxt = int(last.argmax())
                else:
                    probs = _filter(last / temperature, top_k, top_p).softmax(-1)
                    nxt = int(torch.multinomial(probs, 1, generator=g))
                out.append(nxt)
                logits, state = self(torch.tensor([[nxt]], device=self.device), state)
        sep = "" if self.hparams.tokenizer == "char" else " "
        return prompt + sep + sep.join(self.hparams.vocab[i] for i in out)


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Logits with everything outside the top-k / the nucleus set to -inf."""
    if top_k is not None and top_k < logits.numel():
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens entirely beyond the nucleus (the first always stays)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits
