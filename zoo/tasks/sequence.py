"""Sequence tasks over the recurrent nets of ``zoo.nets.recurrent``: classification of token sequences and
language modelling with stateful truncated BPTT."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from zoo import _pretrained
from zoo._registry import get_entry
from zoo.tasks._base import Task
from zoo.tasks._optim import OPTIMIZERS, SCHEDULES, check_choice

__all__ = ["SequenceClassifier", "LanguageModel"]

# The DataModules' tokenisers (datamodules.text), repeated here so that a model alone can read raw strings.
TOKENIZE = {"char": list, "whitespace": str.split}
OBJECTIVES = ("classify", "tag", "regress")
IGNORE = -100  # targets that are not scored (per-step tasks)
ADDING_TOLERANCE = 0.04  # Hochreiter & Schmidhuber 1997: an adding-problem answer is right within 0.04


class SequenceClassifier(Task):
    """Cross-entropy classifier over token sequences, with accuracy and macro-F1.

    The vocabulary and the class names come from the DataModule at ``setup`` (its ``vocab`` and ``classes``) and
    are stored in the hyperparameters, so a checkpoint or published weights rebuild the model alone and
    ``predict(["Nakamura"])`` works on raw strings.

    The DataModule's ``objective`` also sets what is learnt: ``classify`` (one label per sequence), ``tag`` (a
    label per step, targets -100 not scored; the copy-memory task) or ``regress`` (one number per sequence, MSE
    loss, ``acc`` = share of absolute errors below 0.04; the adding problem). DataModules of float features
    give ``input_size`` instead of a vocabulary.

    Args:
        arch: ``rnn_classifier``, ``lstm_classifier`` or ``gru_classifier``.
        vocab, classes, tokenizer, lowercase, objective, input_size: filled from the DataModule when not given.
        embed_dim, hidden_size, num_layers, bidirectional, dropout, pooling: the net (``zoo.nets.recurrent``);
            ``net_kwargs`` for the rest (``residual``, ``nonlinearity``, ``recurrent_init``, ``forget_bias`` ...).
        pretrained: published weights ``name.tag`` to start from; their vocabulary and classes come with them
            (other ``classes`` reset the classifier).
        optimizer, lr, momentum, weight_decay, schedule, warmup_epochs: as ``ImageClassifier``.
        label_smoothing: cross-entropy label smoothing.
        class_weighted: weight the loss by the DataModule's ``class_weights`` (inverse class frequency).
        grad_clip: gradient-norm clipping (Pascanu et al. 2013); ``--trainer.gradient_clip_val`` overrides it.
    """

    monitor = ("val_acc", "max")
    # what rebuilds the net of published weights (stored in the manifest beside them)
    weights_kwargs = (
        "vocab",
        "classes",
        "tokenizer",
        "lowercase",
        "objective",
        "input_size",
        "embed_dim",
        "hidden_size",
        "num_layers",
        "bidirectional",
        "dropout",
        "pooling",
        "net_kwargs",
    )

    def __init__(
        self,
        arch: str = "lstm_classifier",
        vocab: list[str] | None = None,
        classes: list[str] | None = None,
        tokenizer: str = "char",
        lowercase: bool = False,
        objective: str = "classify",
        input_size: int | None = None,
        embed_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        pooling: str = "last",
        net_kwargs: dict | None = None,
        pretrained: str | None = None,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.01,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        class_weighted: bool = False,
        grad_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("tokenizer", tokenizer, tuple(TOKENIZE))
        check_choice("objective", objective, OBJECTIVES)
        if get_entry(arch).kind != "sequence":
            raise ValueError(f"{arch!r} is not a sequence classifier; use one of rnn/lstm/gru_classifier")
        if lr <= 0 or weight_decay < 0 or not 0 <= label_smoothing < 1 or (grad_clip is not None and grad_clip <= 0):
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, 0 <= label_smoothing < 1, grad_clip > 0 or None; got lr={lr}, "
                f"weight_decay={weight_decay}, label_smoothing={label_smoothing}, grad_clip={grad_clip}"
            )
        self.save_hyperparameters()
        self.net: nn.Module | None = None
        self.register_buffer("class_weights", None, persistent=False)
        if pretrained and (vocab is None or classes is None):  # the weights bring their vocabulary and classes
            entry = _pretrained.get_pretrained(pretrained)["model_kwargs"]
            self.hparams.vocab = vocab if vocab is not None else entry["vocab"]
            self.hparams.classes = classes if classes is not None else entry["classes"]
        if self._buildable():
            self._build()

    # -- building from the data -------------------------------------------------------------------------------
    def _buildable(self) -> bool:
        h = self.hparams
        return (h.vocab is not None or h.input_size is not None) and (h.classes is not None or h.objective == "regress")

    def _build(self) -> None:
        h = self.hparams
        kwargs = {
            "embed_dim": h.embed_dim,
            "hidden_size": h.hidden_size,
            "num_layers": h.num_layers,
            "bidirectional": h.bidirectional,
            "dropout": h.dropout,
            "pooling": "none" if h.objective == "tag" else h.pooling,
            **({"input_size": h.input_size} if h.vocab is None else {}),
            **(h.net_kwargs or {}),
        }
        vocab_size = len(h.vocab) if h.vocab is not None else None
        n = 1 if h.objective == "regress" else len(h.classes)
        self.net = get_entry(h.arch).builder(vocab_size=vocab_size, num_classes=n, **kwargs)
        if h.pretrained:
            _pretrained.load_into(self.net, h.pretrained, arch=h.arch)
        self.stoi = {t: i for i, t in enumerate(h.vocab or [])}
        for stage in ("train", "val", "test"):
            if h.objective == "regress":
                setattr(self, f"{stage}_acc", MeanMetric())  # share of |error| < 0.04
            else:
                setattr(self, f"{stage}_acc", MulticlassAccuracy(n, average="micro", ignore_index=IGNORE))
                if stage != "train":
                    setattr(self, f"{stage}_f1", MulticlassF1Score(n, average="macro", ignore_index=IGNORE))

    def setup(self, stage: str) -> None:
        """Take the vocabulary, classes and objective from the DataModule (first fit), or check that they agree."""
        dm = getattr(self.trainer, "datamodule", None)
        vocab, classes = getattr(dm, "vocab", None), list(getattr(dm, "classes", None) or [])
        itos = getattr(vocab, "itos", vocab)
        h = self.hparams
        if self.net is None:
            h.objective = getattr(dm, "objective", h.objective)
            h.input_size = getattr(dm, "input_size", None) if itos is None else None
            if (itos is None and h.input_size is None) or (not classes and h.objective != "regress"):
                raise ValueError(
                    "the model needs a vocabulary and class names: give a DataModule with `vocab` and `classes` "
                    "(e.g. --data names) or pass --model.vocab and --model.classes"
                )
            h.vocab = list(itos) if itos is not None else None
            h.classes = classes or None
            dm_h = getattr(dm, "hparams", {})
            h.tokenizer = dm_h.get("tokenizer", getattr(dm, "default_tokenizer", h.tokenizer))
            h.lowercase = dm_h.get("lowercase", h.lowercase)
            self._build()
        else:
            if itos is not None and list(itos) != list(h.vocab or []):
                raise ValueError(
                    f"the data's vocabulary ({len(itos)} tokens) differs from the model's ({len(h.vocab or [])}): "
                    "token ids would mean other tokens. Use the data the model was trained on."
                )
            if classes and classes != list(h.classes or []):
                raise ValueError(f"the data's classes {classes[:5]} differ from the model's {(h.classes or [])[:5]}")
        if h.class_weighted and dm is not None and getattr(dm, "class_weights", None):
            self.class_weights = torch.tensor(dm.class_weights, dtype=torch.float32, device=self.device)

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(tokens, lengths)  # (B, C); (B, T, C) for "tag"; (B, 1) for "regress"

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.objective == "regress":
            return F.mse_loss(out.float().squeeze(-1), y.float())
        if self.hparams.objective == "tag":
            out, y = out.flatten(0, 1), y.flatten()
        return F.cross_entropy(
            out.float(), y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing, ignore_index=IGNORE
        )

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, lengths, y = batch
        out = self(x, lengths)
        loss = self._loss(out, y)
        n = len(y)
        acc = getattr(self, f"{stage}_acc")
        if self.hparams.objective == "regress":
            acc.update(((out.detach().float().squeeze(-1) - y).abs() < ADDING_TOLERANCE).float())
        else:
            preds, target = (out.flatten(0, 1), y.flatten()) if self.hparams.objective == "tag" else (out, y)
            acc.update(preds.detach(), target)
            if stage != "train":
                getattr(self, f"{stage}_f1").update(preds, target)
                self.log(f"{stage}_f1", getattr(self, f"{stage}_f1"), batch_size=n)
        train = stage == "train"
        self.log(f"{stage}_loss", loss, prog_bar=train, sync_dist=not train, batch_size=n)
        self.log(f"{stage}_acc", acc, prog_bar=not train, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    @torch.enable_grad()
    def hidden_state_gradients(self, batch, max_examples: int = 32) -> torch.Tensor:
        """``||dL/dh_t||`` for every step ``t`` (top layer, forward direction; mean over up to ``max_examples`` of
        the batch), from the step-by-step pass of ``RecurrentEncoder.unrolled_states`` with dropout off. Parameter
        gradients are left untouched. Sequences are read at full length (the synthetic tasks' are equal)."""
        x, _, y = (t[:max_examples] for t in batch)
        was_training = self.training
        self.eval()
        out, hs = self.net.encoder.unrolled_states(x)
        loss = self._loss(self.net.head(self.net.pool(out)), y)
        grads = torch.autograd.grad(loss, hs)
        self.train(was_training)
        return torch.stack([g.norm(dim=-1).mean() for g in grads]).detach()  # (T,)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self(batch[0], batch[1])
        return out.squeeze(-1) if self.hparams.objective == "regress" else out.softmax(-1)  # values or probabilities

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        val = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        if val:
            self.clip_gradients(
                optimizer, gradient_clip_val=val, gradient_clip_algorithm=gradient_clip_algorithm or "norm"
            )

    # -- raw strings ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        """Token ids of a raw string with the model's own tokeniser and vocabulary (unknown tokens -> ``<unk>``)."""
        h = self.hparams
        unk = self.stoi.get("<unk>", 0)
        tokens = TOKENIZE[h.tokenizer](text.lower() if h.lowercase else text)
        return torch.tensor([self.stoi.get(t, unk) for t in tokens] or [unk], dtype=torch.long)

    @torch.no_grad()
    def predict(self, texts: str | list[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class, probability)`` for each raw string."""
        if self.net is None or self.hparams.vocab is None or self.hparams.objective != "classify":
            raise RuntimeError(
                "predict() reads raw strings into a classifier with a vocabulary: train it first, or "
                "load a checkpoint / published weights"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.encode(t) for t in texts]
        lengths = torch.tensor([len(i) for i in ids])
        x = nn.utils.rnn.pad_sequence(ids, batch_first=True).to(self.device)
        was_training = self.training
        self.eval()
        probs = self(x, lengths).float().softmax(-1).cpu()
        self.train(was_training)
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [(self.hparams.classes[c], round(float(p), 4)) for p, c in zip(ps, cs)]
            for ps, cs in zip(top.values, top.indices)
        ]


class LanguageModel(Task):
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
        bptt: tokens per truncated-BPTT step (default: the whole window of a batch).
        grad_clip: gradient-norm clipping, applied at every step (on in every recurrent recipe).
    """

    monitor = ("val_loss", "min")
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
        net_kwargs: dict | None = None,
        pretrained: str | None = None,
        bptt: int | None = None,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.01,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        grad_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("tokenizer", tokenizer, tuple(TOKENIZE))
        if get_entry(arch).kind != "language_model":
            raise ValueError(f"{arch!r} is not a language model; use one of rnn_lm, lstm_lm, gru_lm")
        if lr <= 0 or (bptt is not None and bptt < 1) or (grad_clip is not None and grad_clip <= 0):
            raise ValueError(f"need lr > 0, bptt >= 1, grad_clip > 0 or None; got {lr}, {bptt}, {grad_clip}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # truncated BPTT: several optimiser steps per batch
        self.net: nn.Module | None = None
        self._state = {"train": None, "val": None, "test": None}
        if pretrained and vocab is None:
            self.hparams.vocab = _pretrained.get_pretrained(pretrained)["model_kwargs"]["vocab"]
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
            _pretrained.load_into(self.net, h.pretrained, arch=h.arch)
        self.stoi = {t: i for i, t in enumerate(h.vocab)}
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        itos = getattr(getattr(dm, "vocab", None), "itos", None)
        if self.net is None:
            if not itos:
                raise ValueError("the model needs a vocabulary: give a DataModule with `vocab` (e.g. --data charlm)")
            self.hparams.vocab = list(itos)
            self.hparams.tokenizer = getattr(dm, "hparams", {}).get("tokenizer", self.hparams.tokenizer)
            self._build()
        elif itos is not None and list(itos) != list(self.hparams.vocab):
            raise ValueError(
                f"the data's vocabulary ({len(itos)} tokens) differs from the model's ({len(self.hparams.vocab)}): "
                "token ids would mean other tokens. Use the text the model was trained on."
            )
        seq_len = getattr(dm, "hparams", {}).get("seq_len")
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

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- sampling ---------------------------------------------------------------------------------------------
    @torch.no_grad()
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
        2020). The same ``seed`` gives the same text."""
        if self.net is None:
            raise RuntimeError("the model has no vocabulary yet: train it, or load a checkpoint / published weights")
        if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
        h = self.hparams
        unk = self.stoi.get("<unk>", 0)
        ids = [self.stoi.get(t, unk) for t in TOKENIZE[h.tokenizer](prompt)] or [unk]
        g = torch.Generator(device=self.device)
        if seed is not None:
            g.manual_seed(seed)
        was_training = self.training
        self.eval()
        logits, state = self(torch.tensor([ids], device=self.device))
        out = []
        for _ in range(max_new):
            last = logits[0, -1].float()
            if temperature == 0:
                nxt = int(last.argmax())
            else:
                probs = _filter(last / temperature, top_k, top_p).softmax(-1)
                nxt = int(torch.multinomial(probs, 1, generator=g))
            out.append(nxt)
            logits, state = self(torch.tensor([[nxt]], device=self.device), state)
        self.train(was_training)
        sep = "" if h.tokenizer == "char" else " "
        return prompt + sep + sep.join(h.vocab[i] for i in out)


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
