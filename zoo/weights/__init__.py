"""Published weights: the manifest (one typed :class:`Weights` per entry, read once per process), the store (the
checkpoints folder, the user cache, a url; sha256 verified), loading into a net (with vocabulary remapping for
fine-tuning) and publishing a finished run."""

from zoo.weights.load import load_into, resolve, weights_for
from zoo.weights.manifest import Weights, find_weights, read_manifest, weights_names
from zoo.weights.store import PretrainedError, cache_dir, checkpoint_dir, local_places, sha256_of

__all__ = [
    "Weights",
    "PretrainedError",
    "read_manifest",
    "find_weights",
    "weights_names",
    "resolve",
    "weights_for",
    "load_into",
    "checkpoint_dir",
    "cache_dir",
    "local_places",
    "sha256_of",
]
