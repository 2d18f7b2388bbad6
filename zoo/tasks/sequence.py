"""Sequence classification over the recurrent nets of ``zoo.nets.recurrent`` (one label per sequence, a label per
step, or a number per sequence)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from datamodules.contract import TOKENIZERS, UNK, Labelled, Tokenised, settings
from zoo._registry import get_entry
from zoo.tasks._optim import check_choice
from zoo.tasks._text import TextTask, given_texts, warn_unknown

__all__ = ["SequenceClassifier"]

OBJECTIVES = ("classify", "tag", "regress")
IGNORE = -100  # targets that are not scored (per-step tasks)
ADDING_TOLERANCE = 0.04  # Hochreiter & Schmidhuber 1997: an adding-problem answer is right within 0.04


class SequenceClassifier(TextTask):
    """Cross-entropy classifier over token sequences, with accuracy and macro-F1.

    The vocabulary and the class names come from the DataModule in ``fit_to_data`` (its ``vocab`` and ``classes``) and
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
        freeze, unfreeze_epoch, backbone_lr_mult: fine-tuning, the same in every task (see :class:`Task`).
        optimizer, lr, momentum, weight_decay, schedule, warmup_epochs: as ``ImageClassifier``.
        label_smoothing: cross-entropy label smoothing.
        class_weighted: weight the loss by the DataModule's ``class_weights`` (inverse class frequency).
        grad_clip: gradient-norm clipping (Pascanu et al. 2013); ``--trainer.gradient_clip_val`` overrides it.
        compile: ``torch.compile`` the net while fitting (True / False; None: the family's default, off).
    """

    monitor = ("val_acc", "max")
    train_metrics = ("train_acc",)

    @classmethod
    def describe(cls, metrics: dict, split: str) -> str:
        f1 = f", F1 {metrics[f'{split}_f1']:.3f}" if f"{split}_f1" in metrics else ""
        return f"{100 * metrics[f'{split}_acc']:.2f}%{f1}"

    remappable = ("vocab", "classes")
    indexed_params = {
        "encoder.embedding.weight": ("vocab", (0,)),
        "head.weight": ("classes", (0,)),
        "head.bias": ("classes", (0,)),
    }
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
        net_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        freeze: str | None = None,
        unfreeze_epoch: int | None = None,
        backbone_lr_mult: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.01,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        class_weighted: bool = False,
        grad_clip: float | None = 1.0,
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_training_args()
        check_choice("tokenizer", tokenizer, tuple(TOKENIZERS))
        check_choice("objective", objective, OBJECTIVES)
        self.net: nn.Module | None = None
        self.register_buffer("class_weights", None, persistent=False)
        if pretrained:  # the weights bring their architecture, vocabulary and classes
            self.take_weights_kwargs()
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
            self.load_weights()
        self.stoi = {t: i for i, t in enumerate(h.vocab or [])}
        for stage in ("train", "val", "test"):
            if h.objective == "regress":
                setattr(self, f"{stage}_acc", MeanMetric())  # share of |error| < 0.04
            else:
                setattr(self, f"{stage}_acc", MulticlassAccuracy(n, average="micro", ignore_index=IGNORE))
                if stage != "train":
                    setattr(self, f"{stage}_f1", MulticlassF1Score(n, average="macro", ignore_index=IGNORE))
            if stage != "train":
                setattr(self, f"{stage}_mean_loss", MeanMetric())  # summed over DDP ranks (see Tagger._eval_step)

    def fit_to_data(self, stage: str) -> None:
        """Take the vocabulary, classes and objective from the DataModule (first fit), or check that they agree
        (what is read: ``datamodules.contract.TextClassificationData``)."""
        dm = self.datamodule
        vocab = dm.vocab if isinstance(dm, Tokenised) else None
        classes = list(dm.classes or []) if isinstance(dm, Labelled) else []
        itos = getattr(vocab, "itos", vocab)  # a Vocab, or a plain token list
        h = self.hparams
        if self.net is None:  # objective, input_size, default_tokenizer, class_weights: optional members
            h.objective = getattr(dm, "objective", h.objective)
            h.input_size = getattr(dm, "input_size", None) if itos is None else None
            if (itos is None and h.input_size is None) or (not classes and h.objective != "regress"):
                raise ValueError(
                    "the model needs a vocabulary and class names: give a DataModule with `vocab` and `classes` "
                    "(e.g. --data names) or pass --model.vocab and --model.classes"
                )
            h.vocab = list(itos) if itos is not None else None
            h.classes = classes or None
            dm_h = settings(dm)
            self.adopt(
                tokenizer=dm_h.get("tokenizer", getattr(dm, "default_tokenizer", h.tokenizer)),
                lowercase=dm_h.get("lowercase", h.lowercase),
            )
            self._build()
        else:
            self.check_text_settings(dm)
            if self.differs_from_data({"vocab": itos, "classes": classes or None}):
                h.vocab = list(itos) if itos is not None else h.vocab
                h.classes = classes or h.classes
                self._build()
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
        if not train:
            mean_loss = getattr(self, f"{stage}_mean_loss")
            mean_loss.update(loss.detach(), n)
        self.log(f"{stage}_loss", loss if train else mean_loss, prog_bar=train, batch_size=n)
        if not train:  # the training accuracy is logged at the epoch's end (Task.train_metrics)
            self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=n)
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
        with self.evaluating():
            out, hs = self.net.encoder.unrolled_states(x)
            loss = self._loss(self.net.head(self.net.pool(out)), y)
            grads = torch.autograd.grad(loss, hs)
        return torch.stack([g.norm(dim=-1).mean() for g in grads]).detach()  # (T,)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self(batch[0], batch[1])
        return out.squeeze(-1) if self.hparams.objective == "regress" else out.softmax(-1)  # values or probabilities

    # -- raw strings ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, texts: str | list[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class, probability)`` for each raw string, most likely first (a single string gives a
        list of one). An empty or whitespace-only string is refused (ValueError naming it): the model would give it
        a confident-looking class; a string none of whose tokens it knows is classified with a warning."""
        if self.net is None or self.hparams.vocab is None or self.hparams.objective != "classify":
            raise RuntimeError(
                "predict() reads raw strings into a classifier with a vocabulary: train it first, or "
                "load a checkpoint / published weights"
            )
        texts = given_texts(texts, "text")
        ids = [self.encode(t) for t in texts]
        for i, x in enumerate(ids):
            warn_unknown("text", i, x.tolist(), self.stoi.get(UNK, 0))
        lengths = torch.tensor([len(i) for i in ids])
        x = nn.utils.rnn.pad_sequence(ids, batch_first=True).to(self.device)
        with self.evaluating():
            probs = self(x, lengths).float().softmax(-1).cpu()
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [(self.hparams.classes[c], round(float(p), 4)) for p, c in zip(ps, cs)]
            for ps, cs in zip(top.values, top.indices)
        ]
