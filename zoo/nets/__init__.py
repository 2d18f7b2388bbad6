"""Plain ``torch.nn`` architectures. No Lightning, no I/O, no data: importing a family registers its builders."""

from zoo.nets import lenet, resnet  # noqa: F401

__all__ = ["lenet", "resnet"]
