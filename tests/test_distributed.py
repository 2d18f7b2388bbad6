"""Several processes (CPU, gloo): for every task family two DDP processes measure the validation metric one process
measures on the same weights and data, and the trained model comes back to the caller of a spawned run; a frozen
backbone under DDP is in test_finetune.py. Also: SyncBatchNorm and FSDP refused on CPU in one line, the presets, and
a two-node launch through torchrun (two launches on 127.0.0.1, one process each).

The per-family runs use ``ddp_fork``: Lightning's same multiprocessing launcher as ``ddp_spawn`` (the caller gets
rank 0's state dict, loaded with ``strict=False``), without each worker importing torch again (0.5 s a run instead of
10-20 s); one ``ddp_spawn`` run checks the spawned path itself."""

import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import FIXTURE_ARGS, ROOT, quiet_trainer
from torch.utils.data import DistributedSampler

import zoo
from datamodules._base import EvalShard
from datamodules.charlm import CharLMDataModule, StreamBatches
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.conll import CoNLLDataModule
from datamodules.names import NamesDataModule
from datamodules.text import BucketBatchSampler
from datamodules.translation import TranslationDataModule

DDP = {"strategy": "ddp_fork", "accelerator": "cpu", "devices": 2}
FAMILIES = ["image", "sequence", "language_model", "seq2seq", "tagger"]
PAIRS = [  # a toy translation that two epochs half learn: BLEU between 0 and 100 tells a lost sentence
    ("ein hund läuft .", "a dog runs ."),
    ("eine katze schläft .", "a cat sleeps ."),
    ("ein vogel singt .", "a bird sings ."),
    ("der hund schläft .", "the dog sleeps ."),
    ("die katze läuft .", "the cat runs ."),
    ("der vogel schläft .", "the bird sleeps ."),
]
WORDS = [("EU", "B-ORG"), ("rejects", "O"), ("German", "B-MISC"), ("call", "O"), ("Peter", "B-PER"), (".", "O")]


@pytest.fixture(scope="module")
def toy_text(tmp_path_factory) -> Path:
    """A translation file (72 pairs: 11 val) and CoNLL-2003 splits (train 8 sentences, dev 5, test 3)."""
    root = tmp_path_factory.mktemp("toy_text")
    (root / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for _ in range(12) for a, b in PAIRS), encoding="utf-8")
    conll = root / "conll"
    conll.mkdir()
    for split, n in (("train", 8), ("dev", 5), ("test", 3)):
        sentences = [WORDS[i % 3 : i % 3 + 3 + i % 4] for i in range(n)]
        text = "".join("".join(f"{w} NNP I-NP {t}\n" for w, t in s) + "\n" for s in sentences)
        (conll / f"{split}.txt").write_text(text, encoding="utf-8")
    return root


def family(name: str, cifar_dir: Path, names_dir: Path, text_path: Path, toy_text: Path):
    """(model, DataModule, trainer options) of a family, the smallest that measure something: odd validation splits
    (41 images, 11 names, 3 streams, 11 pairs, 5 sentences), which two ranks cannot split evenly."""
    if name == "image":
        dm = CIFAR10DataModule(
            str(cifar_dir), num_images=(200, 40), val_size=41, num_workers=0, batch_size=16, eval_batch_size=10
        )
        return zoo.create_model("lenet5"), dm, {"limit_train_batches": 2}
    if name == "sequence":
        dm = NamesDataModule(str(names_dir), val_fraction=0.4, test_fraction=0.2, batch_size=4, eval_batch_size=3)
        return zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8), dm, {"limit_train_batches": 2}
    if name == "language_model":
        dm = CharLMDataModule(str(text_path), batch_size=4, seq_len=16, eval_batch_size=3)
        model = zoo.create_model("lstm_lm", embed_dim=8, hidden_size=16, num_layers=1, dropout=0.0)
        return model, dm, {"limit_train_batches": 2}
    if name == "seq2seq":
        dm = TranslationDataModule(
            str(toy_text / "pairs.tsv"), batch_size=8, eval_batch_size=5, min_freq=1, val_fraction=0.15
        )
        kw = {"embed_dim": 16, "hidden_size": 16, "lr": 0.02, "schedule": "constant", "label_smoothing": 0.0}
        return zoo.create_model("seq2seq_gru_attn", dropout=0.0, **kw), dm, {"max_epochs": 2}
    dm = CoNLLDataModule(str(toy_text / "conll"), batch_size=2, eval_batch_size=2)
    model = zoo.create_model("bilstm_crf", word_dim=8, hidden_size=8, net_kwargs={"char_dim": 4, "char_hidden": 4})
    return model, dm, {"limit_train_batches": 2}


class RankStates(L.Callback):
    """Saves each rank's state dict at the end of fit, as ``rank<r>.pt`` in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def assert_caller_holds_rank_zeros_model(model: L.LightningModule, folder: Path) -> None:
    """The caller's state dict is rank 0's, key for key and bit for bit, and the ranks agree."""
    caller = model.state_dict()
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert any(k.startswith("net.") for k in caller) and set(caller) == set(ranks[0]) == set(ranks[1])
    for k, v in caller.items():
        assert torch.equal(v, ranks[0][k]), f"{k}: the caller's is not rank 0's"
        assert torch.equal(ranks[0][k], ranks[1][k]), f"{k}: the ranks disagree"


@pytest.mark.parametrize("name", FAMILIES)
def test_two_processes_validate_as_one(name, cifar_dir, names_dir, text_path, toy_text, tmp_path):
    """Two DDP processes train (the weights the caller gets back are rank 0's), then measure the validation split
    between them: every metric equals what one process measures with those weights on that split."""
    L.seed_everything(0)
    model, dm, kw = family(name, cifar_dir, names_dir, text_path, toy_text)
    trainer = quiet_trainer(tmp_path, callbacks=[RankStates(tmp_path)], **DDP, **kw)
    trainer.fit(model, dm)
    assert_caller_holds_rank_zeros_model(model, tmp_path)
    two = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    one = quiet_trainer(tmp_path).validate(model, family(name, cifar_dir, names_dir, text_path, toy_text)[1])[0]
    assert two and set(two) == set(one)
    assert {k: pytest.approx(v, rel=1e-6, abs=1e-6) for k, v in one.items()} == two
    if name == "seq2seq":
        assert 0 < two["val_bleu"] < 100  # a sentence lost or counted twice would move it


@pytest.mark.slow  # ~10-30 s: each spawned worker imports torch and Lightning again; the ddp_fork runs above
# check the same launcher's return in `make test`
def test_ddp_spawn_returns_the_text_model_to_the_caller(names_dir, tmp_path):
    """Under ddp_spawn a text task builds its net in the workers (setup, from the data's vocabulary); the caller had
    none, and Lightning's strict=False load dropped every weight: the caller now holds rank 0's model, and uses it."""
    model = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8)
    assert model.net is None
    dm = NamesDataModule(str(names_dir), val_fraction=0.2, test_fraction=0.2, batch_size=4)
    spawn = {**DDP, "strategy": "ddp_spawn"}
    quiet_trainer(tmp_path, callbacks=[RankStates(tmp_path)], limit_train_batches=2, **spawn).fit(model, dm)
    assert_caller_holds_rank_zeros_model(model, tmp_path)
    assert model.hparams.classes == ["Japanese", "Russian", "Scottish"] and len(model.predict("Tanaka")[0]) == 3


def test_a_state_dict_says_which_net_it_holds(names_dir, tmp_path):
    """The mechanism behind the spawned run's return: a task without a net (or outside a run, with one of other
    shapes) builds the one a state dict describes before loading it, also after torch.save / torch.load(weights_only
    =True); inside a run a state dict of another net stays an error."""
    trained = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8)
    quiet_trainer(tmp_path, max_steps=1).fit(trained, NamesDataModule(str(names_dir), batch_size=4))
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    fresh = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.hparams.vocab == trained.hparams.vocab and fresh.predict("Abe") == trained.predict("Abe")
    small = {"vocab": ["<pad>", "<unk>", "a"], "classes": ["x", "y"]}
    elsewhere = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8, **small)
    elsewhere.load_state_dict(trained.state_dict())  # outside a run: a net that could not hold it is rebuilt
    assert elsewhere.hparams.classes == trained.hparams.classes and elsewhere.predict("Abe") == trained.predict("Abe")
    other = zoo.create_model("gru_classifier", hidden_size=8, embed_dim=8, **small)
    other.trainer = quiet_trainer(tmp_path)  # in a run: the net is the data's
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(trained.state_dict())


def test_evaluation_shards_read_every_example_once():
    """41 examples on 2 ranks: Lightning's sampler reads 42 (one twice); the evaluation shards read each once, for
    an image split (EvalShard) and a bucketed text split (the sampler Lightning puts in, read without padding)."""
    lengths = [i % 7 + 1 for i in range(41)]
    padded = [list(DistributedSampler(range(41), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sum(map(len, padded)) == 42
    shards = [list(EvalShard(range(41), 2, r)) for r in (0, 1)]
    buckets = [
        BucketBatchSampler(DistributedSampler(range(41), 2, r, shuffle=False), 4, False, lengths, shuffle=False)
        for r in (0, 1)
    ]
    for per_rank in (shards, [[i for b in s for i in b] for s in buckets]):
        assert sorted(per_rank[0] + per_rank[1]) == list(range(41))
    assert [len(s) for s in buckets] == [len(list(s)) for s in buckets] == [6, 5]
    with pytest.raises(ValueError, match="evaluation split of 1 examples for 2 processes"):
        EvalShard(range(1), 2, 1)


def test_language_model_evaluation_streams_do_not_depend_on_the_processes():
    """Validation text is cut into eval_batch_size streams whatever the number of processes, shared out among them
    (training: batch_size streams per process)."""
    ids = torch.arange(301)
    one = StreamBatches(ids, 3, 10, shared=True)
    two = [StreamBatches(ids, 3, 10, rank=r, world_size=2, shared=True) for r in (0, 1)]
    assert torch.equal(torch.cat([two[0].x, two[1].x]), one.x) and len(two[0]) == len(two[1]) == len(one)
    assert StreamBatches(ids, 3, 10, rank=1, world_size=2).x.shape[0] == 3  # training: its own 3 of 6 streams


def test_sync_batchnorm_is_refused_on_cpu_processes(cifar_dir, tmp_path):
    model = zoo.create_model("resnet20")
    dm = CIFAR10DataModule(str(cifar_dir), num_images=(200, 40), val_size=40, num_workers=0, batch_size=16)
    trainer = quiet_trainer(tmp_path, sync_batchnorm=True, max_steps=1, **DDP)
    with pytest.raises(Exception, match=r"--trainer.sync_batchnorm true on CPU processes: .* runs on GPUs only"):
        trainer.fit(model, dm)


def test_sync_batchnorm_on_cpu_is_one_line_from_train_py(cifar_dir, tmp_path, monkeypatch, capsys):
    """The GPU preset (sync_batchnorm on) on CPU processes: one line, status 2, also from a forked worker (torch
    hands train.py the worker's whole traceback)."""
    from zoo.cli.train import main

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--model", "resnet20", "--data", "cifar10", "--data.data_dir", str(cifar_dir), *FIXTURE_ARGS]
    preset = ["--config", str(ROOT / "configs" / "trainer" / "ddp.yaml"), "--trainer.precision", "32-true"]
    status = main(
        [*args, *preset, "--trainer.strategy", "ddp_fork", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("train.py: error: --trainer.sync_batchnorm true on CPU processes")


def test_gpu_presets_keep_sync_batchnorm_and_every_cpu_one_goes_without():
    presets = {p.name: yaml.safe_load(p.read_text())["trainer"] for p in (ROOT / "configs" / "trainer").glob("*.yaml")}
    synced = {name for name, t in presets.items() if t.get("sync_batchnorm")}
    assert "ddp.yaml" in synced
    assert all(presets[name].get("accelerator") == "gpu" for name in synced)


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_fsdp_is_refused_on_cpu_in_one_line(accelerator, cifar_dir, tmp_path, monkeypatch, capsys):
    """torch's FSDP needs an accelerator ("FSDP needs a non-CPU accelerator device", even through a subclass of
    Lightning's strategy), and Lightning refuses it on CPU at once: train.py says so in one line, status 2."""
    from zoo.cli.train import main

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--model", "resnet20", "--data", "cifar10", "--data.data_dir", str(cifar_dir), *FIXTURE_ARGS]
    status = main([*args, "--trainer.strategy", "fsdp", "--trainer.accelerator", accelerator, "--trainer.devices", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("train.py: error: The strategy `fsdp` requires a GPU accelerator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_through_torchrun(cifar_dir, tmp_path):
    """``torchrun --nnodes 2`` launched twice on 127.0.0.1 (node ranks 0 and 1, one process each, each in its own
    folder as on two machines): one run of world size 2 that trains and validates, its run folder on node 0."""
    port = free_port()
    train = [
        "fit",
        "--model",
        "lenet5",
        "--data",
        "cifar10",
        "--data.data_dir",
        str(cifar_dir),
        *FIXTURE_ARGS,
        "--config",
        str(ROOT / "configs" / "trainer" / "ddp_cpu.yaml"),
        "--trainer.devices",
        "1",
        "--trainer.num_nodes",
        "2",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    nodes = []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        launch = ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank)]
        where = ["--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd = [str(Path(sys.executable).parent / "torchrun"), *launch, *where, str(ROOT / "train.py"), *train]
        nodes.append(
            subprocess.Popen(
                cmd, cwd=tmp_path / f"node{rank}", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    out = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], out[0][-3000:] + out[1][-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out[1] and "GLOBAL_RANK: 0, MEMBER: 1/2" in out[0]
    assert "run folder: runs/lenet5-cifar10/version_0" in out[0]
    assert list((tmp_path / "node0" / "runs" / "lenet5-cifar10" / "version_0" / "checkpoints").glob("*.ckpt"))
