import pytest
import torch

import zoo
from zoo._registry import register_model

# Parameter counts from the papers. ResNets: He et al. 2016, Table 6 (0.27M ... 1.7M, two significant digits).
# LeNet-5: our 3x32x32 adaptation (see zoo/nets/lenet.py) computed by hand: 456 + 2,416 + 48,120 + 10,164 + 850.
PAPER_PARAMS = {
    "lenet5": (62_006, 0),
    "resnet20": (0.27e6, 0.005e6),
    "resnet32": (0.46e6, 0.005e6),
    "resnet44": (0.66e6, 0.005e6),
    "resnet56": (0.85e6, 0.005e6),
    "resnet110": (1.7e6, 0.05e6),
}
NAMES = zoo.list_models()


def test_every_model_has_a_paper_count():
    assert set(NAMES) == set(PAPER_PARAMS), "add the paper's parameter count for new models to PAPER_PARAMS"


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_parameter_count_matches_paper(name):
    count = sum(p.numel() for p in zoo.create_model(name).net.parameters())
    expected, tol = PAPER_PARAMS[name]
    assert abs(count - expected) <= tol, f"{name}: {count:,} parameters, paper {expected:,.0f}"


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=7)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"
    assert model.net.forward_features(x).ndim == 2


def test_list_models_filters():
    assert zoo.list_models("resnet*") == ["resnet110", "resnet20", "resnet32", "resnet44", "resnet56"]
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


def test_reset_classifier():
    net = zoo.create_model("resnet20").net
    net.reset_classifier(3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_resnet_shortcuts_are_parameter_free_option_a():
    net = zoo.create_model("resnet20").net
    assert not any("shortcut" in n for n, _ in net.named_parameters())
    with pytest.raises(ValueError, match="6n\\+2"):
        zoo.nets.resnet.CifarResNet(depth=21)


def test_lenet_rejects_other_sizes():
    with pytest.raises(ValueError, match="32x32"):
        zoo.create_model("lenet5")(torch.randn(1, 3, 64, 64))
