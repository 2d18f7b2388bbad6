"""The built wheel carries the published weights: a user who installs it, with no checkout and no network, loads
every family of published model.

Built as a user's build tool does it: an sdist of the repository, then the wheel from that sdist (so the sdist is
checked too, and the build runs in a fresh folder: setuptools' ``build/lib`` in the checkout is reused between
builds and would let files deleted from the tree into the wheel). Offline: no build isolation, no index.
"""

import hashlib
import json
import os
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from conftest import ROOT

PUBLISHED = "zoo/weights/published"  # where setup.py puts checkpoints/ in the wheel (package data of zoo.weights)
IMAGE = "lenet5.cifar10"  # the smallest image model; its input size comes from the manifest
# one published entry of every family -> (raw input, predict options); the inputs are built in the fresh venv
CASES = {
    IMAGE: ("image", {"top_k": 3}),
    "gru_classifier.names": (["Nakamura"], {"top_k": 3}),
    "bilstm_crf.conll2003": ("EU rejects German call", {}),
    "seq2seq_gru_attn.multi30k_de_en": ("Ein Mann schläft .", {}),
    "lstm_lm.tinyshakespeare": ("ROMEO:", {"length": 20, "seed": 0}),
}

# Run by the installed wheel's interpreter, from outside the checkout: where zoo comes from, where it finds the
# weights, and each case's prediction with how long its load took (the first one includes importing zoo).
CHECK = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import zoo
from zoo.weights.store import checkpoint_dir

cases, size = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"zoo": zoo.__file__, "checkpoint_dir": str(checkpoint_dir()), "import_s": time.perf_counter() - t0}
for name, (inputs, kwargs) in cases.items():
    t = time.perf_counter()
    model = zoo.load_pretrained(name)
    load_s = time.perf_counter() - t
    if inputs == "image":
        inputs = torch.zeros(*size, dtype=torch.uint8)
    out[name] = {"load_s": load_s, "predicted": model.predict(inputs, **kwargs)}
print(json.dumps(out))
"""


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _build_wheel(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    # the PEP 517 hook that `python -m build` calls, with this interpreter's setuptools (no isolation, offline)
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
          dist], cwd=ROOT)  # fmt: skip
    [sdist] = dist.glob("*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", dist, sdist], cwd=tmp_path)  # fmt: skip
    [wheel] = dist.glob("*.whl")
    return wheel


def _check_weights_inside(wheel: Path) -> dict:
    """The wheel holds the manifest and every file it names, byte for byte (sha256); returns the manifest."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert f"{PUBLISHED}/manifest.json" in names, sorted(n for n in names if not n.endswith(".py"))
        manifest_bytes = z.read(f"{PUBLISHED}/manifest.json")
        assert manifest_bytes == (ROOT / "checkpoints" / "manifest.json").read_bytes()
        manifest = json.loads(manifest_bytes)
        for name, entry in manifest.items():
            for spec in filter(None, [entry, entry.get("model_kwargs_file")]):
                path = f"{PUBLISHED}/{spec['file']}"
                assert path in names, f"{name}: {path} is not in {wheel.name}"
                assert hashlib.sha256(z.read(path)).hexdigest() == spec["sha256"], f"{name}: {path} differs"
        assert not any(n.startswith("checkpoints/") for n in names)  # the package data only, no top-level copy
    return manifest


def test_wheel_carries_the_published_weights_and_loads_them_without_the_checkout(tmp_path):
    t = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    build_s = time.perf_counter() - t
    manifest = _check_weights_inside(wheel)
    assert set(CASES) <= set(manifest), set(CASES) - set(manifest)

    # A fresh venv outside the checkout. pip installs into it before it can see the dev venv's packages (it would
    # find the dev venv's lightning-zoo there); then a .pth line makes those packages (torch ...) importable without
    # installing them. A .pth line only adds the folder: the .pth files inside it, among them the dev venv's
    # editable-install finder that would import zoo from the checkout, are not processed.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    t = time.perf_counter()
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    install_s = time.perf_counter() - t
    purelib = Path(_run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    installed = purelib / PUBLISHED
    assert {p.name for p in installed.iterdir()} >= {"manifest.json", *(e["file"] for e in manifest.values())}
    (purelib / "_dev_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_CHECKPOINTS", "PYTHONPATH")}
    env["ZOO_CACHE"] = str(tmp_path / "empty-cache")  # nothing to find there, and nothing to download from
    env.setdefault("OMP_NUM_THREADS", "1")
    size = manifest[IMAGE]["preprocessing"]["input_size"]
    t = time.perf_counter()
    res = _run([python, "-I", "-c", CHECK, json.dumps(CASES), json.dumps(size)], cwd=tmp_path, env=env)
    check_s = time.perf_counter() - t
    out = json.loads(res.stdout.strip().splitlines()[-1])

    zoo_file = Path(out["zoo"]).resolve()
    assert zoo_file.is_relative_to(venv.resolve()) and not zoo_file.is_relative_to(ROOT), zoo_file
    assert Path(out["checkpoint_dir"]).resolve() == installed.resolve()
    assert not any((tmp_path / "empty-cache").rglob("*"))  # nothing downloaded
    [image] = out[IMAGE]["predicted"]
    assert len(image) == 3 and all(isinstance(c, str) and 0 <= p <= 1 for c, p in image)
    [names] = out["gru_classifier.names"]["predicted"]
    assert len(names) == 3 and all(isinstance(c, str) for c, _ in names)
    [tagged] = out["bilstm_crf.conll2003"]["predicted"]
    assert tagged["tokens"] == ["EU", "rejects", "German", "call"] and len(tagged["tags"]) == 4
    [english] = out["seq2seq_gru_attn.multi30k_de_en"]["predicted"]
    assert isinstance(english, str) and english.strip()
    [text] = out["lstm_lm.tinyshakespeare"]["predicted"]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20

    print(
        f"\nwheel {wheel.stat().st_size / 1e6:.1f} MB (sdist + wheel built in {build_s:.1f} s); "
        f"install {install_s:.1f} s; import zoo {out['import_s']:.1f} s + first load {out[IMAGE]['load_s']:.1f} s; "
        f"{len(CASES)} loads and predictions in a fresh process {check_s:.1f} s"
    )
