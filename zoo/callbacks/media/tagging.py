"""W&B pictures of the tagging family (placeholder: the family's media are being written)."""

from __future__ import annotations

import lightning as L


def callbacks(model: L.LightningModule, every_n_epochs: int, samples: int) -> list[L.Callback]:
    return []
