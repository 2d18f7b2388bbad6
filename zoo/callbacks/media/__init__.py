"""W&B pictures per task family, logged at validation end (``--wandb.media false`` turns them off):
:func:`media_callbacks` picks the ones for a task."""

from __future__ import annotations

import lightning as L

from zoo.callbacks.media._base import ValidationMedia

__all__ = ["ValidationMedia", "media_callbacks"]


def media_callbacks(model: L.LightningModule, every_n_epochs: int = 1, samples: int = 8) -> list[L.Callback]:
    """The media callbacks for ``model``'s family (none for a task without any)."""
    return []
