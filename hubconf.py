"""torch.hub entry points: one per registered model, made here from the registry so that none is forgotten.

model = torch.hub.load("<owner>/lightning-zoo", "resnet20", pretrained=True)
torch.hub.list("<owner>/lightning-zoo")  # every model of zoo.list_models()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

if TYPE_CHECKING:  # only names that are not callable at run time: torch.hub.list takes every public callable here
    from collections.abc import Callable

    import lightning as L

dependencies = ["torch"]


def _entry_point(name: str) -> Callable[..., L.LightningModule]:
    def entry(pretrained: bool | str = False, **kwargs) -> L.LightningModule:
        return zoo.create_model(name, pretrained=pretrained, **kwargs)

    weights = zoo.list_pretrained(f"{name}.*")
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name} as its LightningModule, {zoo.task_class(name).__name__} (``.net`` is the plain nn.Module).\n\n"
        "    pretrained: False (random initialisation), True (the model's published weights), a tag or a full name\n"
        f"        'model.tag'. Published for {name}: {', '.join(weights) or 'none'}.\n"
        "    kwargs: as zoo.create_model takes them: task hyperparameters (num_classes=, lr=, ...), then net ones.\n"
    )
    return entry


for _name in zoo.list_models():
    globals()[_name] = _entry_point(_name)
