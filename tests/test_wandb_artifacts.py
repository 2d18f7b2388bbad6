"""Checkpoints as W&B model artifacts, read back from the offline run's records and staged files: with
``--wandb.log_model true`` the best and the last checkpoint are two versions of ``model-<run id>`` (aliases best,
latest) whose metadata is the checkpoint's; staged locally, ``load_pretrained("wandb:...")`` and ``zoo publish
wandb:...`` take them; a WandbLogger given with ``--trainer.logger`` lands in the run folder and resumes; the errors
are one line that says what to do."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import lenet_args, run_train
from PIL import Image
from safetensors.torch import load_file
from wandb_records import WandbRun

import zoo
from zoo.cli.main import main
from zoo.weights import PretrainedError
from zoo.weights.wandb_artifacts import RECORD, STAGED_ENV, md5_b64

ENTITY, PROJECT = "me", "lightning-zoo"


def wandb_env(home: Path) -> dict:
    """Offline W&B, its folders in ``home`` (the module-scoped run starts before conftest's per-test isolation)."""
    dirs = {v: str(home) for v in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    return {"WANDB_MODE": "offline", **dirs}


def train(cifar_dir: Path, cwd: Path, *args: str):
    args = lenet_args(cifar_dir, "--trainer.limit_train_batches", "4", *args)
    res = run_train(["fit", *args], cwd, env=wandb_env(cwd / "wandb-home"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def models(run: WandbRun) -> list[dict]:
    return [a for a in run.artifacts.values() if a["type"] == "model"]


@pytest.fixture(scope="module")
def logged(cifar_dir, tmp_path_factory):
    """A 2-epoch LeNet-5 run with --wandb.log_model true: its run folder and its W&B run read back."""
    cwd = tmp_path_factory.mktemp("logged")
    train(cifar_dir, cwd, "--trainer.max_epochs", "2", "--wandb.log_model", "true")
    run_dir = cwd / "runs" / "lenet5-cifar10" / "version_0"
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    return run_dir, WandbRun(folder)


def stage(artifact: dict, root: Path, alias: str) -> str:
    """Put ``artifact`` (a record of the run) where ``wandb artifact get ... --root`` would, under ``root``, with
    its manifest's digests beside it; returns the reference that finds it."""
    folder = root / ENTITY / PROJECT / artifact["name"] / alias
    folder.mkdir(parents=True, exist_ok=True)
    for path, local in artifact["files"].items():
        shutil.copyfile(local, folder / path)
    files = {path: {"digest": digest} for path, digest in artifact["digests"].items()}
    record = {"aliases": artifact["aliases"], "metadata": artifact["metadata"], "files": files}
    (folder / RECORD).write_text(json.dumps(record))
    return f"wandb:{ENTITY}/{PROJECT}/{artifact['name']}:{alias}"


def test_log_model_logs_the_best_and_the_last_checkpoint_with_their_metadata(logged):
    run_dir, run = logged
    best, last = models(run)  # in the order logged: the best, then the last (which W&B's "latest" then names)
    assert best["name"] == last["name"] == f"model-{run.run['id']}" == f"model-{(run_dir / 'wandb_id').read_text()}"
    assert "best" in best["aliases"] and "best" not in last["aliases"] and "latest" in last["aliases"]
    assert list(best["files"]) == ["best.ckpt"] and list(last["files"]) == ["last.ckpt"]
    for artifact in (best, last):
        (name,) = artifact["files"]
        ckpt_path = run_dir / "checkpoints" / name
        ckpt = torch.load(ckpt_path, weights_only=True)
        assert artifact["digests"][name] == md5_b64(ckpt_path) == md5_b64(Path(artifact["files"][name]))
        meta = artifact["metadata"]
        assert meta["model"] == "lenet5" and meta["task"] == "zoo.tasks.image.ImageClassifier"
        assert meta["model_kwargs"]["num_classes"] == 10 and len(meta["model_kwargs"]["classes"]) == 10
        assert meta["params"] == 62006 == sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("net."))
        assert meta["checkpoint"] == {
            "file": name,
            "epoch": ckpt["epoch"],
            "step": ckpt["global_step"],
            "selected_on": "val_acc (max)" if name == "best.ckpt" else "final",
        }
        assert meta["data"]["class_path"] == "datamodules.cifar10.CIFAR10DataModule"
        assert meta["data"]["init_args"]["val_size"] == 40 and "data_dir" not in meta["data"]["init_args"]
        assert meta["recipe"] == "runs/lenet5-cifar10/version_0/config.yaml"
        assert meta["metric"]["name"] == "val_acc" and meta["metric"]["mode"] == "max"
        assert set(meta["metrics"]) >= {"val_acc", "val_loss"}
    states = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["callbacks"]
    state = next(v for k, v in states.items() if "'monitor': 'val_acc'" in k)
    assert best["metadata"]["metric"]["value"] == pytest.approx(float(state["best_model_score"]))
    assert best["metadata"]["metric"]["value"] == pytest.approx(max(run.curve("val_acc")))
    assert last["metadata"]["metric"]["value"] == pytest.approx(run.curve("val_acc")[-1]), "the last epoch's value"


def test_a_staged_artifact_loads_and_publishes_as_its_checkpoint(logged, tmp_path, monkeypatch, capsys, cifar_dir):
    run_dir, run = logged
    best, last = models(run)
    monkeypatch.setenv(STAGED_ENV, str(tmp_path / "staged"))
    refs = {"best": stage(best, tmp_path / "staged", "best"), "last": stage(last, tmp_path / "staged", "latest")}
    for name, ref in refs.items():
        model = zoo.load_pretrained(ref)
        saved = torch.load(run_dir / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]
        assert not model.training and model.hparams.arch == "lenet5"
        for key, value in model.state_dict().items():
            assert torch.equal(value, saved[key]), key
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["predict", refs["best"], str(tmp_path / "red.png"), "--top-k", "2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert len(row["output"]) == 2 and row["output"][0][0] in model.hparams.classes
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "published"))
    args = ["--tag", "fixture", "--recipe", "configs/lenet5.cifar10.yaml", "--data-dir", str(cifar_dir), "--float32"]
    assert main(["publish", refs["best"], *args]) == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "published" / "manifest.json").read_text())["lenet5.fixture"]
    checkpoint = entry["evaluation"]["checkpoint"]
    assert checkpoint["source"] == refs["best"] and checkpoint["selected_on"] == "val_acc (max)"
    assert entry["evaluation"]["command"].startswith(f"zoo publish {refs['best']} ")
    published = load_file(tmp_path / "published" / "lenet5.fixture.safetensors")
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert published and all(torch.equal(v, saved[f"net.{k}"]) for k, v in published.items())


def test_artifact_errors_are_one_line_that_says_what_to_do(logged, tmp_path, monkeypatch, capsys):
    best = models(logged[1])[0]
    staged = tmp_path / "staged"
    ref = stage(best, staged, "best")
    base = ref.rsplit(":", 1)[0]
    with pytest.raises(PretrainedError, match="WANDB_MODE=disabled and no copy of it.*wandb artifact get"):
        zoo.load_pretrained(ref)  # not staged where it is looked for: nothing to load offline
    monkeypatch.setenv(STAGED_ENV, str(staged))
    with pytest.raises(PretrainedError, match=f"aliases of {best['name']} there: best"):
        zoo.load_pretrained(base + ":v7")
    with pytest.raises(PretrainedError, match="not a W&B artifact reference: write wandb:ENTITY/PROJECT/NAME:ALIAS"):
        zoo.load_pretrained("wandb:lenet5-best")
    with pytest.raises(TypeError, match="takes no model arguments"):
        zoo.load_pretrained(ref, num_classes=3)
    empty = staged / ENTITY / PROJECT / best["name"] / "notes"
    empty.mkdir()
    (empty / "README.md").write_text("no checkpoint here")
    with pytest.raises(PretrainedError, match=r"holds no \.ckpt \(files in .*: README.md\)"):
        zoo.load_pretrained(base + ":notes")
    ckpt = staged / ENTITY / PROJECT / best["name"] / "best" / "best.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-1] + b"x")
    with pytest.raises(PretrainedError, match="the artifact's manifest says .*Refusing to load it"):
        zoo.load_pretrained(ref)
    monkeypatch.delenv("WANDB_MODE")  # online, but no wandb to ask: said, with the staged copy's way out
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(PretrainedError, match="wandb is not installed.*no copy of it on this machine"):
        zoo.load_pretrained(base + ":v7")
    assert main(["publish", base + ":v7", "--tag", "x", "--recipe", "r.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: wandb:") and len(err.strip().splitlines()) == 1


class FakeArtifact:
    """What ``wandb.Api().artifact`` returns, for the part the zoo reads: no network."""

    def __init__(self, source: Path, version: str) -> None:
        self.source, self.version = source, version
        self.qualified_name, self.aliases = f"{ENTITY}/{PROJECT}/model-x:{version}", ["best"]
        self.digest, self.metadata, self.downloads = md5_b64(source), {"model": "lenet5"}, 0
        entry = type("Entry", (), {"digest": md5_b64(source), "size": source.stat().st_size})
        self.manifest = type("Manifest", (), {"entries": {source.name: entry}})

    def download(self, root: str) -> str:
        FakeArtifact.downloads += 1
        shutil.copyfile(self.source, Path(root) / self.source.name)
        return root


def test_an_online_artifact_is_downloaded_once_per_version_into_the_cache(logged, tmp_path, monkeypatch):
    import wandb

    run_dir = logged[0]
    versions = {"best": FakeArtifact(run_dir / "checkpoints" / "best.ckpt", "v0")}

    class Api:
        def artifact(self, path, type=None):
            alias = path.rsplit(":", 1)[1]
            if alias not in versions:
                raise wandb.errors.CommError(f"artifact '{path}' not found in '{ENTITY}/{PROJECT}'")
            return versions[alias]

        def artifacts(self, type_name, name):
            return list(versions.values())

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr(wandb, "Api", Api)
    FakeArtifact.downloads = 0
    ref = f"wandb:{ENTITY}/{PROJECT}/model-x:best"
    first = zoo.load_pretrained(ref)
    assert first.hparams.arch == "lenet5" and FakeArtifact.downloads == 1
    zoo.load_pretrained(ref)
    assert FakeArtifact.downloads == 1, "the cached copy is still what the alias points to: not downloaded again"
    cached = tmp_path / "zoo-cache" / "wandb" / ENTITY / PROJECT / "model-x" / "best"
    assert json.loads((cached / RECORD).read_text())["version"] == "v0"
    versions["best"] = FakeArtifact(run_dir / "checkpoints" / "last.ckpt", "v1")  # the alias moved
    moved = zoo.load_pretrained(ref)
    assert FakeArtifact.downloads == 2 and {p.name for p in cached.iterdir()} == {RECORD, "last.ckpt"}
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in moved.state_dict().items())
    with pytest.raises(PretrainedError, match="W&B has no such artifact or alias .*its aliases: best, v1"):
        zoo.load_pretrained(ref.replace(":best", ":v9"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # offline, the cached copy serves
    assert zoo.load_pretrained(ref).hparams.arch == "lenet5" and FakeArtifact.downloads == 2


@pytest.mark.slow
def test_a_given_wandb_logger_lands_in_the_run_folder_and_resumes(cifar_dir, tmp_path):
    """``--trainer.logger WandbLogger`` with its own options: the run folder, the zoo's project and id file (so that
    ``--ckpt_path last`` continues the same W&B run), its tags over --wandb's; log_model all logs each save."""
    given = ["--trainer.logger", "WandbLogger", "--trainer.logger.log_model", "all", "--trainer.logger.tags", "[mine]"]
    opts = [*given, "--wandb.tags", "[theirs]", "--wandb.group", "g"]
    train(cifar_dir, tmp_path, "--trainer.max_epochs", "1", *opts)
    train(cifar_dir, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last", *opts)
    run_dir = tmp_path / "runs" / "lenet5-cifar10" / "version_0"
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "lightning_logs").exists()
    first, resumed = (WandbRun(p) for p in sorted((run_dir / "wandb").glob("offline-run-*")))
    assert first.run["id"] == resumed.run["id"] == (run_dir / "wandb_id").read_text()
    assert first.run["project"] == "lightning-zoo" and first.run["tags"] == ["mine"] and first.run["group"] == "g"
    for run, epoch in ((first, 0), (resumed, 1)):
        saved = [
            (list(a["files"])[0], a["metadata"]["checkpoint"]["epoch"], "best" in a["aliases"]) for a in models(run)
        ]
        lasts = [s for s in saved if s[0] == "last.ckpt"]
        assert lasts == [("last.ckpt", epoch, False)], "each save of last.ckpt once, even where two callbacks save it"
        assert all(is_best == (name == "best.ckpt") for name, _, is_best in saved)
        assert len(saved) == len(set(saved))
