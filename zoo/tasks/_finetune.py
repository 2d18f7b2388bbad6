"""Fine-tuning from published weights, shared by every task (``Task`` mixes it in): the weights' architecture
taken over, their rows mapped onto the data's vocabularies and classes, and a frozen backbone (its batch-norm
statistics and the weights' own embedding rows kept exactly as published)."""

from __future__ import annotations

import inspect

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.nn.modules.batchnorm import _BatchNorm

from zoo.weights import Weights, load_into, weights_for

__all__ = ["FineTuning"]

FREEZE = ("backbone",)
MIN_KNOWN = 0.5  # share of a fine-tuning vocabulary the weights should know, else a warning


class FineTuning:
    """Three hyperparameters of every task:

    - ``freeze="backbone"``: only the head (``head_prefixes`` of the net: the classifier, the tagger's emission
      layer and CRF, the output layer of language models and translators) trains; the rest keeps its weights and
      its batch-norm statistics (a linear probe). On data with other vocabularies the rows of entries the weights
      do not know start random, so they train too (the weights' own rows stay exactly as published).
    - ``unfreeze_epoch=N``: with ``freeze="backbone"``, the backbone starts training at epoch N (the head is
      trained alone first so that its random start does not wreck the pretrained features; Howard & Ruder 2018).
    - ``backbone_lr_mult``: the backbone's learning rate relative to ``lr`` (e.g. 0.1; ``configure_optimizers``).

    ``pretrained`` names the weights (``take_weights_kwargs``, ``load_weights``).
    """

    head_prefixes: tuple[str, ...] = ("head.",)  # net parameters trained from scratch when fine-tuning
    _frozen: bool = False
    # net embeddings that gained rows the published weights lack -> which of their rows the weights know (dim 0)
    known_rows: dict[str, torch.Tensor] = {}
    weights: Weights | None = None  # the published weights of ``pretrained``, resolved once

    # net state keys indexed by one of the task's vocabularies (tokens, classes, tags):
    # key -> (vocabulary, the dims it indexes; () for buffers the net rebuilds from the vocabulary)
    indexed_params: dict[str, tuple[str, tuple[int, ...]]] = {}
    remappable: tuple[str, ...] = ()  # hyperparameters in weights_kwargs that fine-tuning maps instead of copying

    def take_weights_kwargs(self) -> None:
        """With ``pretrained``, build the weights' architecture: their ``weights_kwargs`` replace the model's (the
        weights load into nothing else), except the ``remappable`` ones (vocabularies, classes), taken only when
        not given. Values replaced that were set otherwise than by default are logged."""
        h = self.hparams
        # a tag (--model.pretrained cifar10 means <arch>.cifar10), a name, or the Weights that create_model resolved
        self.weights = weights_for(h.arch, h.pretrained)
        self.adopt(pretrained=self.weights.name)  # a hyperparameter stays a name (checkpoints load weights_only)
        entry = self.weights.kwargs
        take = {
            k: entry[k]
            for k in self.weights_kwargs
            if k in entry and (h.get(k) is None if k in self.remappable else h.get(k) != entry[k])
        }
        default = {k: p.default for k, p in inspect.signature(type(self)).parameters.items()}
        replaced = [f"{k}={take[k]!r} (not {h[k]!r})" for k in take if h.get(k) not in (None, default.get(k))]
        if replaced:
            rank_zero_info(f"{h.pretrained}: the weights' architecture: {', '.join(replaced)}")
        self.adopt(**take)

    @staticmethod
    def vocabularies(h) -> dict[str, list | None]:
        """The task's vocabularies held in hyperparameters (or a manifest's model kwargs) ``h``, by name."""
        return {}

    def load_weights(self) -> None:
        """Load the published weights ``pretrained`` into the net. Where the model's vocabularies differ from the
        weights' (fine-tuning on other data), entries both hold keep their learnt rows and the others start
        fresh; what was mapped is logged."""
        h = self.hparams
        w = self.weights if self.weights is not None else weights_for(h.arch, h.pretrained)
        old = self.vocabularies({"classes": w.classes, **w.kwargs})  # images keep their class names in the entry
        new = self.vocabularies(h)
        remap = {
            key: (v, list(old[v]), list(new[v]), dims)
            for key, (v, dims) in self.indexed_params.items()
            if old.get(v) is not None and new.get(v) is not None and list(old[v]) != list(new[v])
        }
        load_into(self.net, w, arch=h.arch, remap=remap)
        # rows of entries the weights do not know start random: they train even with a frozen backbone (see
        # _set_frozen), so note which rows are the weights' own
        theirs = {v: set(entries) for v, entries in old.items() if entries is not None}
        self.known_rows = {
            key: torch.tensor([t in theirs[v] for t in n])
            for key, (v, _, n, dims) in remap.items()
            if dims and not key.startswith(self.head_prefixes) and not theirs[v].issuperset(n)
        }
        for v in sorted({remap[key][0] for key in self.known_rows}):
            known, total = sum(t in theirs[v] for t in new[v]), len(new[v])
            if known < MIN_KNOWN * total:
                rank_zero_warn(
                    f"{w.name} knows only {known:,} of the data's {total:,} {v} entries ({known / total:.1%}): the "
                    "others start from random vectors, so this is close to training from scratch. Check that the "
                    "data is in the weights' language and read their way, or train without --model.pretrained"
                )

    def differs_from_data(self, theirs: dict[str, list | None]) -> bool:
        """Whether the data's vocabularies (``None``: the data does not say) differ from the model's. Without
        published weights to map from that is an error: ids would mean other entries. With ``pretrained`` the
        caller takes the data's and rebuilds the net (:meth:`load_weights` maps what it can)."""
        mine = self.vocabularies(self.hparams)
        differ = [k for k, v in theirs.items() if v is not None and list(v) != list(mine.get(k) or [])]
        if differ and not self.hparams.get("pretrained"):
            sizes = ", ".join(f"{k} ({len(theirs[k])} vs {len(mine.get(k) or [])})" for k in differ)
            raise ValueError(
                f"the data's {sizes} differ from the model's: ids would mean other entries. Use the data (and its "
                "settings) the model was trained on, or start from published weights (--model.pretrained NAME.TAG), "
                "which maps the entries both hold"
            )
        if differ:
            rank_zero_info(f"fine-tuning on data with other {', '.join(differ)}: mapping them onto the weights")
        return bool(differ)

    def is_head(self, name: str) -> bool:
        """Whether net parameter ``name`` belongs to the head (not frozen by ``freeze="backbone"``)."""
        return name.startswith(self.head_prefixes)

    def backbone_frozen(self, epoch: int) -> bool:
        h = self.hparams
        return h.get("freeze") == "backbone" and (h.get("unfreeze_epoch") is None or epoch < h.unfreeze_epoch)

    def _set_frozen(self, frozen: bool) -> None:
        for name, p in self.net.named_parameters():
            if not self.is_head(name):  # an embedding with new rows trains them (on_after_backward masks the rest)
                p.requires_grad_(not frozen or name in self.known_rows)
        self._frozen = frozen
        self.train(self.training)  # re-applies the batch-norm mode
        n = sum(p.numel() for name, p in self.net.named_parameters() if not self.is_head(name))
        new = [f"{k} ({int((~rows).sum()):,} rows)" for k, rows in self.known_rows.items()]
        but = f", but the new rows of {', '.join(new)} train: the weights have none for them" if frozen and new else ""
        rank_zero_info(
            f"backbone ({n:,} parameters) {'frozen' if frozen else 'unfrozen'} at epoch {self.current_epoch}{but}"
        )

    def on_after_backward(self) -> None:
        """With the backbone frozen, an embedding that gained rows for entries the weights do not know learns those
        rows alone: the gradient of the weights' rows is zeroed (they are kept out of weight decay, see
        ``configure_optimizers``, so they stay exactly as published)."""
        if not (self._frozen and self.known_rows):
            return
        params = dict(self.net.named_parameters())
        for key, known in self.known_rows.items():
            grad = params[key].grad
            if grad is not None:
                grad[known.to(grad.device)] = 0

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but a frozen backbone keeps its batch-norm statistics (eval mode)."""
        super().train(mode)
        if mode and self._frozen:
            for name, m in self.net.named_modules():
                if isinstance(m, _BatchNorm) and not self.is_head(name + "."):
                    m.eval()
        return self

    def check_finetune_args(self) -> None:
        """Refuse bad values of ``freeze`` and ``unfreeze_epoch``."""
        h = self.hparams
        if h.freeze is not None and h.freeze not in FREEZE:
            raise ValueError(f"freeze must be one of {', '.join(FREEZE)} or None; got {h.freeze!r}")
        if h.unfreeze_epoch is not None and (h.freeze is None or h.unfreeze_epoch < 1):
            raise ValueError(
                f"unfreeze_epoch={h.unfreeze_epoch} needs --model.freeze backbone and a value >= 1 (the epoch at "
                "which the backbone starts training)"
            )
