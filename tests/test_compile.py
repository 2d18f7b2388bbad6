"""``--model.compile``: ``torch.compile`` of a task's net while it fits (``zoo.tasks._compile``), and the fused
optimisers chosen on CUDA (``zoo.tasks._optim``).

The plumbing (what is compiled when, state dict names, checkpoints both ways, copies, export and predict after a
compiled fit, the one-line failures) traces with dynamo's ``eager`` backend, which runs the captured graph without
generating code: seconds instead of inductor's minute. One slow test compiles with inductor for real."""

from __future__ import annotations

import copy
import inspect
import pickle

import lightning as L
import pytest
import torch
from conftest import FIXTURE_ARGS, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

import zoo.tasks._compile as compile_mod
from datamodules.names import NamesDataModule
from zoo.checkpoint import load_checkpoint
from zoo.export import export_model
from zoo.tasks import _optim
from zoo.tasks._compile import CompileError, check_compiler, compile_net, is_compiled, uncompile_net
from zoo.tasks.image import ImageClassifier
from zoo.tasks.language_model import LanguageModel
from zoo.tasks.sequence import SequenceClassifier
from zoo.tasks.tagging import Tagger
from zoo.tasks.translation import Seq2Seq

FAMILIES = [ImageClassifier, SequenceClassifier, Tagger, LanguageModel, Seq2Seq]
PREP = {"input_size": [3, 32, 32], "scale": "uint8 / 255", "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture
def eager_backend(monkeypatch):
    """Dynamo traces and guards as with inductor, but runs the captured graphs as they are (no code generation)."""
    monkeypatch.setattr(compile_mod, "BACKEND", "eager")


def lenet(**kw) -> ImageClassifier:
    return ImageClassifier(arch="lenet5", preprocessing=PREP, lr=0.05, **kw)


def images(n: int = 32, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch)


class Watch(L.Callback):
    """Records, at every training batch end, whether the net was compiled and the task's state dict keys; saves a
    checkpoint at ``save_at`` (while the net is compiled)."""

    def __init__(self, save_at: int | None = None, path=None) -> None:
        self.compiled: list[bool] = []
        self.keys: set[str] = set()
        self.save_at, self.path = save_at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.compiled.append(is_compiled(pl_module.net))
        self.keys |= set(pl_module.state_dict())
        if batch_idx == self.save_at:
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_every_family_takes_compile_off_by_default(cls):
    """``compile`` is an option of every family (``--model.compile``), None by default: the family's default, off in
    every family (benchmarks/compile_speed.py: none wins clearly on this CPU)."""
    assert inspect.signature(cls).parameters["compile"].default is None
    assert cls.compile_default is False


def test_compile_setting_resolves_and_is_checked(monkeypatch):
    assert not lenet().compiles() and lenet(compile=True).compiles() and not lenet(compile=False).compiles()
    monkeypatch.setattr(ImageClassifier, "compile_default", True)  # a family whose default is on
    assert lenet().compiles() and not lenet(compile=False).compiles()
    with pytest.raises(ValueError, match="compile must be true, false or None"):
        lenet(compile="yes")


def test_fit_compiles_the_net_in_place_and_checkpoints_load_uncompiled(eager_backend, tmp_path):
    """The net is compiled during the fit and eager after it; state dict keys stay the plain ones (no
    ``_orig_mod.``), and a checkpoint saved while compiled loads into an uncompiled model and gives its outputs."""
    ckpt = tmp_path / "compiled.ckpt"
    watch = Watch(save_at=1, path=ckpt)
    L.seed_everything(0)
    model = lenet(compile=True)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[watch]).fit(model, images())
    assert watch.compiled == [True] * 4
    assert watch.keys == set(lenet().state_dict()) and not any("_orig_mod" in k for k in watch.keys)
    assert not is_compiled(model.net)  # eager again after the fit
    loaded = load_checkpoint(ckpt)
    assert not is_compiled(loaded.net) and loaded.hparams.compile is True
    x = torch.randn(4, 3, 32, 32)
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert torch.isfinite(loaded(x)).all()


def test_compiled_training_follows_the_eager_one(eager_backend, tmp_path):
    """The same seed gives the same weights with and without compile (dynamo's captured graph, run as it is)."""
    weights = {}
    for c in (False, True):
        L.seed_everything(0)
        model = lenet(compile=c)
        quiet_trainer(tmp_path, max_epochs=1).fit(model, images())
        weights[c] = model.state_dict()
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, msg=k)


def test_an_eager_checkpoint_resumes_compiled(eager_backend, tmp_path):
    """A checkpoint of an uncompiled run resumes with compile on: its weights load into the compiled net."""
    L.seed_everything(0)
    ckpt = tmp_path / "eager.ckpt"
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    model = lenet(compile=False)
    trainer.fit(model, images())
    trainer.save_checkpoint(ckpt)
    watch = Watch()
    resumed = lenet(compile=True)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[watch]).fit(resumed, images(), ckpt_path=ckpt)
    assert watch.compiled == [True] * 4  # the second epoch only: the first was the checkpoint's


def test_a_text_net_built_from_the_data_is_compiled(eager_backend, names_dir, tmp_path):
    """A text task builds its net at setup from the data's vocabulary: configure_model, after it, compiles it."""
    watch = Watch()
    model = SequenceClassifier(arch="gru_classifier", hidden_size=16, embed_dim=8, compile=True)
    assert model.net is None
    dm = NamesDataModule(str(names_dir), val_fraction=0.2, test_fraction=0.2, batch_size=8)
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[watch]).fit(model, dm)
    assert watch.compiled and all(watch.compiled)
    assert not is_compiled(model.net)
    assert model.predict(["Nakamura"])[0][0][0] in model.hparams.classes


def test_export_and_predict_after_a_compiled_fit(eager_backend, tmp_path):
    L.seed_everything(0)
    model = lenet(compile=True)
    quiet_trainer(tmp_path, max_epochs=1).fit(model, images())
    top = model.predict(torch.rand(2, 3, 32, 32), top_k=3)
    assert len(top) == 2 and len(top[0]) == 3
    sidecar = export_model(model, "torch", tmp_path / "export", "lenet5")
    assert sidecar["parity"]["passed"]
    compile_net(model.net, "lenet5", "cpu")  # a net left compiled (by hand, or a fit that stopped) exports too
    assert export_model(model, "torch", tmp_path / "export2", "lenet5")["parity"]["passed"]


def test_a_copy_of_a_compiled_net_is_eager_and_its_own(eager_backend):
    """``copy.deepcopy`` and pickling give an eager net that runs its own weights, not the original's call."""
    net = lenet().net
    compile_net(net, "lenet5", "cpu")
    x = torch.randn(2, 3, 32, 32)
    expected = net(x)
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert not is_compiled(twin)
        torch.testing.assert_close(twin(x), expected)
        with torch.no_grad():
            for p in twin.parameters():
                p.zero_()
        assert not torch.allclose(twin(x), expected)  # its own (zeroed) weights
    compile_net(net, "lenet5", "cpu")  # compiling a compiled net does nothing
    uncompile_net(net)
    assert not is_compiled(net)


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


def test_a_compiler_failure_is_one_line(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("cannot generate code\nsecond line of a long trace")

    monkeypatch.setattr(compile_mod, "BACKEND", broken)
    net = lenet().net
    compile_net(net, "lenet5", "cpu")
    with pytest.raises(CompileError) as e:
        net(torch.randn(1, 3, 32, 32))
    message = _one_line(e.value)
    assert "lenet5" in message and message.endswith("--model.compile false")


def test_no_cpu_compiler_is_refused_before_the_run_in_one_line(monkeypatch, tmp_path, capsys, cifar_dir):
    """Without a C++ compiler, inductor fails at the first step with a long trace; the zoo says so in one line
    before training, through train.py too."""
    from zoo.cli.train import main

    no_compiler = torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",)})
    with no_compiler, pytest.raises(CompileError) as e:
        check_compiler("cpu")
    assert "C++ compiler" in _one_line(e.value) and _one_line(e.value).endswith("--model.compile false")

    monkeypatch.setenv("ZOO_RUN_DIR", "")
    monkeypatch.setattr("sys.argv", ["train.py"])
    data = ["--data", "cifar10", "--data.data_dir", str(cifar_dir), *FIXTURE_ARGS]
    quiet = ["--trainer.fast_dev_run", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args = ["fit", "--model", "lenet5", "--model.compile", "true", *data, *quiet, "--run_root", str(tmp_path / "r")]
    with no_compiler:
        assert main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and errors[0].endswith("--model.compile false"), errors


# -- fused optimisers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("devices", [{"cuda"}, {"cpu"}, {"cuda", "cpu"}], ids=["cuda", "cpu", "mixed"])
def test_fused_optimisers_on_cuda_only(optimizer, devices, monkeypatch):
    """The fused kernels are chosen when every parameter is on CUDA (the device type mocked: torch builds fused
    optimisers over CPU tensors too, so the choice is checked on the real optimiser)."""
    monkeypatch.setattr(_optim, "_device_types", lambda module: devices)
    net = lenet().net
    opt = _optim.build_optimizer(net, optimizer, 0.1, 5e-4, 0.9)
    assert opt.defaults.get("fused") is (True if devices == {"cuda"} else None)


def test_no_fused_optimiser_for_a_net_without_parameters_or_with_integer_ones(monkeypatch):
    monkeypatch.setattr(_optim, "_device_types", lambda module: {"cuda"})
    assert _optim.fused_kwargs(torch.nn.ReLU()) == {}
    net = torch.nn.Linear(2, 2)
    net.register_parameter("count", torch.nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False))
    assert _optim.fused_kwargs(net) == {}
    assert _optim.fused_kwargs(torch.nn.Linear(2, 2)) == {"fused": True}


# -- inductor for real ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_inductor_compiled_fit_matches_eager(tmp_path):
    """LeNet-5 compiled by inductor trains to the eager run's weights (to float tolerance: fused kernels reorder
    sums), and its compiled forward gives the eager outputs."""
    weights = {}
    for c in (False, True):
        L.seed_everything(0)
        model = lenet(compile=c)
        quiet_trainer(tmp_path, max_epochs=1).fit(model, images(n=16))
        weights[c] = model.state_dict()
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-3, atol=1e-4, msg=k)
