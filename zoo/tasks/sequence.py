"""Sequence tasks over the recurrent nets of ``zoo.nets.recurrent``: classification of token sequences."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from zoo import _pretrained
from zoo._registry import get_entry
from zoo.tasks._base import Task
from zoo.tasks._optim import OPTIMIZERS, SCHEDULES, check_choice

__all__ = ["SequenceClassifier"]

# The DataModules' tokenisers (datamodules.text), repeated here so that a model alone can read raw strings.
TOKENIZE = {"char": list, "whitespace": str.split}


class SequenceClassifier(Task):
    """Cross-entropy classifier over token sequences, with accuracy and macro-F1.

    The vocabulary and the class names come from the DataModule at ``setup`` (its ``vocab`` and ``classes``) and
    are stored in the hyperparameters, so a checkpoint or published weights rebuild the model alone and
    ``predict(["Nakamura"])`` works on raw strings.

    Args:
        arch: ``rnn_classifier``, ``lstm_classifier`` or ``gru_classifier``.
        vocab, classes, tokenizer, lowercase: filled from the DataModule when not given.
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
        if self.hparams.vocab is not None and self.hparams.classes is not None:
            self._build()

    # -- building from the data -------------------------------------------------------------------------------
    def _build(self) -> None:
        h = self.hparams
        kwargs = {
            "embed_dim": h.embed_dim,
            "hidden_size": h.hidden_size,
            "num_layers": h.num_layers,
            "bidirectional": h.bidirectional,
            "dropout": h.dropout,
            "pooling": h.pooling,
            **(h.net_kwargs or {}),
        }
        self.net = get_entry(h.arch).builder(vocab_size=len(h.vocab), num_classes=len(h.classes), **kwargs)
        if h.pretrained:
            _pretrained.load_into(self.net, h.pretrained, arch=h.arch)
        self.stoi = {t: i for i, t in enumerate(h.vocab)}
        n = len(h.classes)
        self.train_acc = MulticlassAccuracy(n, average="micro")
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(n, average="micro"))
            setattr(self, f"{stage}_f1", MulticlassF1Score(n, average="macro"))

    def setup(self, stage: str) -> None:
        """Take the vocabulary and classes from the DataModule (first fit), or check that they agree."""
        dm = getattr(self.trainer, "datamodule", None)
        vocab, classes = getattr(dm, "vocab", None), list(getattr(dm, "classes", None) or [])
        itos = getattr(vocab, "itos", vocab)
        if self.net is None:
            if not itos or not classes:
                raise ValueError(
                    "the model needs a vocabulary and class names: give a DataModule with `vocab` and `classes` "
                    "(e.g. --data names) or pass --model.vocab and --model.classes"
                )
            self.hparams.vocab, self.hparams.classes = list(itos), classes
            dm_h = getattr(dm, "hparams", {})
            self.hparams.tokenizer = dm_h.get("tokenizer", getattr(dm, "default_tokenizer", self.hparams.tokenizer))
            self.hparams.lowercase = dm_h.get("lowercase", self.hparams.lowercase)
            self._build()
        else:
            if itos is not None and list(itos) != list(self.hparams.vocab):
                raise ValueError(
                    f"the data's vocabulary ({len(itos)} tokens) differs from the model's ({len(self.hparams.vocab)}):"
                    " token ids would mean other tokens. Use the data the model was trained on."
                )
            if classes and classes != list(self.hparams.classes):
                raise ValueError(
                    f"the data's classes {classes[:5]}... differ from the model's {self.hparams.classes[:5]}"
                )
        if self.hparams.class_weighted and dm is not None and getattr(dm, "class_weights", None):
            self.class_weights = torch.tensor(dm.class_weights, dtype=torch.float32, device=self.device)

    # -- steps ------------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(tokens, lengths)  # (B, C)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.class_weights
        return F.cross_entropy(logits.float(), y, weight=w, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, lengths, y = batch
        logits = self(x, lengths)
        loss = self._loss(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, lengths, y = batch
        logits = self(x, lengths)
        acc, f1 = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_f1")
        acc(logits, y)
        f1(logits, y)
        self.log(f"{stage}_loss", self._loss(logits, y), sync_dist=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_f1", f1, batch_size=len(y))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, lengths = batch[0], batch[1]
        return self(x, lengths).softmax(-1)  # (B, C) probabilities

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
        if self.net is None:
            raise RuntimeError("the model has no vocabulary yet: train it, or load a checkpoint / published weights")
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
