"""Plain ``torch.nn`` architectures. No Lightning, no I/O, no data: importing a family registers its builders."""

from zoo.nets import alexnet, crf, densenet, googlenet, lenet, recurrent, resnet, seq2seq, tagger, vgg  # noqa: F401

__all__ = ["alexnet", "densenet", "googlenet", "lenet", "recurrent", "resnet", "seq2seq", "tagger", "vgg", "crf"]
