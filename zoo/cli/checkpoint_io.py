"""How ``train.py`` writes checkpoints: atomically (a run killed while saving keeps its previous file whole), and
never with non-finite weights (a diverged run cannot leave NaN weights as ``best.ckpt`` or ``last.ckpt``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.callbacks.divergence import DivergenceError, non_finite

__all__ = ["SafeCheckpointIO"]


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        bad = non_finite(checkpoint.get("state_dict", {}))
        if bad:
            raise DivergenceError(
                f"not writing {Path(path).name}: {len(bad)} weight tensors are not finite ({', '.join(bad[:3])}) at "
                f"epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')}; the previous file is kept"
            )
        if not isinstance(get_filesystem(path), type(get_filesystem("."))):  # remote (s3://...): fsspec's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
