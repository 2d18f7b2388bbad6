import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo import register_model

IMAGENET = {"stem": "imagenet", "num_classes": 1000}
# Published parameter counts: name -> (net kwargs the paper's figure is for, count, tolerance, source).
PAPER_PARAMS = {
    # LeNet-5: our 3x32x32 adaptation (see zoo/nets/lenet.py) computed by hand: 456 + 2,416 + 48,120 + 10,164 + 850.
    "lenet5": ({}, 62_006, 0, "by hand"),
    **{  # He et al. 2016, Table 6 (0.27M ... 1.7M, two significant digits)
        f"resnet{d}": ({}, n, tol, "He et al. 2016, Table 6")
        for d, n, tol in ((20, 0.27e6, 5e3), (32, 0.46e6, 5e3), (44, 0.66e6, 5e3), (56, 0.85e6, 5e3), (110, 1.7e6, 5e4))
    },
    **{  # Simonyan & Zisserman 2015, Table 2 (millions, ImageNet head)
        f"vgg{d}": ({"classifier": "imagenet", "num_classes": 1000}, n, 0.5e6, "Simonyan & Zisserman 2015, Table 2")
        for d, n in ((11, 133e6), (13, 133e6), (16, 138e6), (19, 144e6))
    },
    "densenet_bc_100_12": ({}, 0.8e6, 0.05e6, "Huang et al. 2017, Table 2"),
    "densenet_bc_250_24": ({}, 15.3e6, 0.05e6, "Huang et al. 2017, Table 2"),
    "alexnet": (IMAGENET, 60e6, 1.5e6, 'Krizhevsky et al. 2012, abstract: "60 million parameters"'),
    # Table 1's parameter column sums to 6.8M; its per-layer figures are rounded and leave out biases.
    "googlenet": ({**IMAGENET, "batch_norm": False}, 6.8e6, 0.25e6, "Szegedy et al. 2015, Table 1"),
}
# Published multiply-adds at 224x224 for nets whose papers give FLOPs, not parameters.
PAPER_GMACS = {
    "resnet18": (IMAGENET, 1.8, 0.05, "He et al. 2016, Table 1"),
    "resnet34": (IMAGENET, 3.6, 0.1, "He et al. 2016, Table 1"),
    "resnet50": (IMAGENET, 3.8, 0.1, "He et al. 2016, Table 1"),
    "googlenet": ({**IMAGENET, "batch_norm": False}, 1.5, 0.1, 'Szegedy et al. 2015, section 1: "1.5 billion"'),
}
# No count or FLOPs published for exactly these nets; their building blocks are checked through the nets above.
NO_PUBLISHED_FIGURE = {
    "preact_resnet18": "He et al. 2016b report only ResNet-164/1001 and ImageNet ResNet-152/200",
    "densenet121": "Huang et al. 2017 plot ImageNet DenseNets (Fig. 3) without a table of counts",
    **{f"vgg{d}_bn": "BatchNorm postdates the VGG paper" for d in (11, 13, 16, 19)},
}
NAMES = zoo.list_models(task="image")
# At 224x224, nets with an ImageNet stem are tested with it (their CIFAR stem keeps 224x224 maps in the first
# stage: resnet50 would cost 60 GMACs). Nets above ~5 GMACs at 224x224 (VGG 7.6-19.6, CIFAR DenseNets 14-265,
# ResNet-56/110 7-12) run there only in `make test-all`, to keep `make test` within its time on 2 cores.
STEM_AT_224 = {"resnet18", "resnet34", "resnet50", "preact_resnet18", "densenet121", "alexnet", "googlenet"}
SLOW_AT_224 = {"resnet56", "resnet110", "densenet_bc_100_12", "densenet_bc_250_24", *(n for n in NAMES if "vgg" in n)}


def test_every_model_has_a_paper_figure():
    checked = set(PAPER_PARAMS) | set(PAPER_GMACS) | set(NO_PUBLISHED_FIGURE)
    assert set(NAMES) == checked, "add the paper's parameter count (or FLOPs) for new models to PAPER_PARAMS"


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS), ids=sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(name):
    kwargs, expected, tol, source = PAPER_PARAMS[name]
    count = sum(p.numel() for p in zoo.create_model(name, **kwargs).net.parameters())
    assert abs(count - expected) <= tol, f"{name}: {count:,} parameters, {source}: {expected:,.0f}"


@pytest.mark.parametrize("name", sorted(PAPER_GMACS), ids=sorted(PAPER_GMACS))
def test_flops_match_paper(name):
    kwargs, expected, tol, source = PAPER_GMACS[name]
    net = zoo.create_model(name, **kwargs).net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    gmacs = counter.get_total_flops() / 2e9
    assert abs(gmacs - expected) <= tol, f"{name}: {gmacs:.2f} GMACs, {source}: {expected}"


def _forward_backward(model, size: int, batch: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    out = model(x)
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"
    assert model.net.forward_features(x).ndim == 2


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n.startswith("densenet") and n != "densenet_bc_100_12" else n
        for n in NAMES
    ],
    ids=NAMES,
)
def test_forward_backward_32(name):
    _forward_backward(zoo.create_model(name, num_classes=7), 32, batch=2)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_AT_224 else n for n in NAMES], ids=NAMES
)
def test_forward_backward_224(name):
    kwargs = {"stem": "imagenet"} if name in STEM_AT_224 else {}
    _forward_backward(zoo.create_model(name, num_classes=7, **kwargs), 224, batch=1)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_in_chans_and_reset_classifier(name):
    net = zoo.create_model(name, in_chans=1, num_classes=4).net.eval()
    with torch.no_grad():
        features = net.forward_features(torch.randn(1, 1, 32, 32))
        assert net.head(features).shape == (1, 4)
        net.reset_classifier(3)
        assert net.num_classes == 3 and net.head(features).shape == (1, 3)


# The DenseNets (DenseNet-BC-250's 250 layers take ~30 s to trace) are exported in `make test-all`.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("densenet") else n for n in NAMES], ids=NAMES
)
def test_torch_export(name):
    net = zoo.create_model(name).net.eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), net(x))


def test_memory_efficient_densenet_gives_the_same_outputs_and_gradients():
    """The two ways of building the concatenation (grown per layer; listed and checkpointed) are one function."""
    torch.manual_seed(0)
    a = zoo.create_model("densenet_bc_100_12", num_classes=7).net
    b = zoo.create_model("densenet_bc_100_12", num_classes=7, memory_efficient=True).net
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    out_a, out_b = a(x), b(x)
    torch.testing.assert_close(out_a, out_b)
    out_a.sum().backward()
    out_b.sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize(
    "name,kwargs,msg",
    [
        ("resnet18", {"stem": "vgg"}, "stem must be"),
        ("alexnet", {"stem": "x"}, "stem must be"),
        ("googlenet", {"stem": "x"}, "stem must be"),
        ("vgg16", {"classifier": "x"}, "classifier must be"),
        ("densenet121", {"compression": 0.0}, "compression"),
    ],
)
def test_bad_net_arguments(name, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        zoo.create_model(name, **kwargs)


def test_list_models_filters():
    assert zoo.list_models("resnet*") == [f"resnet{d}" for d in (110, 18, 20, 32, 34, 44, 50, 56)]
    assert zoo.list_models("vgg*_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert zoo.list_models("lenet?") == ["lenet5"]
    assert zoo.list_models("nothing*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(zoo.UnknownModelError, match="resnet20"):
        zoo.create_model("resnet2O")


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_model(task="image")
        def resnet20():  # noqa: F811
            return torch.nn.Identity()


def test_create_model_routes_net_kwargs():
    m = zoo.create_model("resnet20", zero_init_residual=True, lr=0.05)
    assert m.hparams.lr == 0.05 and m.hparams.net_kwargs == {"zero_init_residual": True}
    assert torch.count_nonzero(m.net.layers[0].bn2.weight) == 0


def test_resnet_shortcuts_are_parameter_free_option_a():
    net = zoo.create_model("resnet20").net
    assert not any("shortcut" in n for n, _ in net.named_parameters())
    with pytest.raises(ValueError, match="6n\\+2"):
        zoo.nets.resnet.CifarResNet(depth=21)


def test_lenet_rejects_small_inputs():
    with pytest.raises(ValueError, match="at least 32x32"):
        zoo.create_model("lenet5")(torch.randn(1, 3, 28, 28))
