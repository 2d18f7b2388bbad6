"""Plain ``torch.nn`` architectures. No Lightning, no I/O, no data: importing a family registers its builders."""

from zoo.nets import alexnet, densenet, googlenet, lenet, recurrent, resnet, seq2seq, vgg  # noqa: F401

__all__ = ["alexnet", "densenet", "googlenet", "lenet", "recurrent", "resnet", "seq2seq", "vgg"]
