"""Where published weights come from: the repository's checkpoints/, the user cache, then the entry's URL (served
here by a local HTTP server: downloaded once, verified, never left half-written in the cache)."""

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.weights import PretrainedError, cache_dir, checkpoint_dir, read_manifest, sha256_of, store

REPO = Path(__file__).resolve().parents[1] / "checkpoints"
REPO_MANIFEST = {n: w.to_json() for n, w in read_manifest(REPO).items()}  # as the file holds them
NAME = "lenet5.cifar10"
WEIGHTS = (REPO / REPO_MANIFEST[NAME]["file"]).read_bytes()


class Server:
    """A local HTTP server: ``files`` maps a path to the bytes it sends; ``mode`` "truncated" announces the full
    Content-Length and sends half, "wrong" sends other bytes, "hang" answers nothing; ``requests`` counts."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode, self.requests, self.release = "ok", [], threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if server.mode == "hang":
                    server.release.wait(10)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "wrong":
                    body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncated" else body)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def write_manifest(folder: Path, entries: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(entries))


@pytest.fixture
def remote(server, tmp_path, monkeypatch):
    """An empty checkpoints folder whose manifest gives lenet5.cifar10 a URL on ``server``; an empty cache."""
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    entry = REPO_MANIFEST[NAME]
    server.files["/w/" + entry["file"]] = WEIGHTS
    write_manifest(tmp_path / "ckpts", {NAME: {**entry, "url": f"{server.url}/w/{entry['file']}"}})
    return server


def cached_files() -> list[str]:
    return sorted(p.name for p in cache_dir().iterdir()) if cache_dir().exists() else []


def test_downloads_once_verifies_and_caches(remote):
    model = zoo.load_pretrained(NAME)
    assert len(remote.requests) == 1
    cached = cache_dir() / REPO_MANIFEST[NAME]["file"]
    assert cached_files() == [cached.name]  # no temporary file left beside it
    assert sha256_of(cached) == REPO_MANIFEST[NAME]["sha256"]
    for k, v in load_file(REPO / REPO_MANIFEST[NAME]["file"]).items():
        assert torch.equal(model.net.state_dict()[k], v.float()), k
    zoo.load_pretrained(NAME)
    zoo.create_model("lenet5", pretrained=True)
    assert len(remote.requests) == 1, "the cached file is used, not downloaded again"


def test_checkpoints_folder_comes_before_cache_and_url(remote):
    shutil.copy(REPO / REPO_MANIFEST[NAME]["file"], checkpoint_dir())
    zoo.load_pretrained(NAME)
    assert remote.requests == [] and cached_files() == []


def test_wrong_file_from_server_is_refused_and_not_cached(remote):
    remote.mode = "wrong"
    with pytest.raises(PretrainedError, match=r"sent a file with sha256 \w+, the manifest says .*Nothing was kept"):
        zoo.load_pretrained(NAME)
    assert cached_files() == []
    remote.mode = "ok"  # the next try downloads again, and succeeds
    zoo.load_pretrained(NAME)
    assert len(remote.requests) == 2 and cached_files() == [REPO_MANIFEST[NAME]["file"]]


def test_truncated_download_leaves_nothing(remote):
    remote.mode = "truncated"
    half, total = len(WEIGHTS) // 2, len(WEIGHTS)
    with pytest.raises(PretrainedError, match=f"stopped after {half} of {total} bytes .*run again to retry"):
        zoo.load_pretrained(NAME)
    assert cached_files() == []


def test_http_error_and_timeout_leave_nothing(remote, monkeypatch):
    remote.files.clear()
    with pytest.raises(PretrainedError, match="failed \\(HTTPError: HTTP Error 404"):
        zoo.load_pretrained(NAME)
    assert cached_files() == []
    remote.mode = "hang"
    monkeypatch.setattr(store, "DOWNLOAD_TIMEOUT_S", 0.3)
    with pytest.raises(PretrainedError, match="failed \\((TimeoutError|URLError).*timed out"):
        zoo.load_pretrained(NAME)
    assert cached_files() == []


def test_corrupt_cached_file_is_refused_not_replaced(remote):
    cache_dir().mkdir(parents=True)
    bad = cache_dir() / REPO_MANIFEST[NAME]["file"]
    bad.write_bytes(WEIGHTS[:-1] + bytes([WEIGHTS[-1] ^ 1]))
    with pytest.raises(PretrainedError, match="Refusing to load it; .*delete it to download it again"):
        zoo.load_pretrained(NAME)
    assert remote.requests == [] and bad.read_bytes() != WEIGHTS


def test_missing_without_url_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    write_manifest(tmp_path / "ckpts", {NAME: REPO_MANIFEST[NAME]})  # no url
    file = REPO_MANIFEST[NAME]["file"]
    with pytest.raises(PretrainedError) as info:
        zoo.load_pretrained(NAME)
    msg = str(info.value)
    assert str(checkpoint_dir() / file) in msg and str(cache_dir() / file) in msg and "no url" in msg


def test_kwargs_side_file_downloads_too(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    name = next(n for n, e in REPO_MANIFEST.items() if e.get("model_kwargs_file"))
    entry = REPO_MANIFEST[name]
    side = entry["model_kwargs_file"]
    server.files["/" + side["file"]] = (REPO / side["file"]).read_bytes()
    write_manifest(
        tmp_path / "ckpts", {name: {**entry, "model_kwargs_file": {**side, "url": server.url + "/" + side["file"]}}}
    )
    shutil.copy(REPO / entry["file"], tmp_path / "ckpts")  # the weights are local: only the side file is fetched
    got = zoo.get_weights(name).kwargs
    assert set(side["keys"]) <= set(got) and len(server.requests) == 1
    assert sha256_of(cache_dir() / side["file"]) == side["sha256"]
    assert zoo.get_weights(name).kwargs == got and len(server.requests) == 1


def test_corrupt_file_without_url_is_not_advised_to_be_deleted(tmp_path, monkeypatch):
    """Deleting a corrupt file brings it back only from a url: without one, the advice is to put the file back."""
    folder = tmp_path / "ckpts"
    write_manifest(folder, {NAME: REPO_MANIFEST[NAME]})  # no url
    (folder / REPO_MANIFEST[NAME]["file"]).write_bytes(WEIGHTS[:-1])
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))
    with pytest.raises(PretrainedError, match="Refusing to load it; put the published file") as info:
        zoo.load_pretrained(NAME)
    assert "delete" not in str(info.value) and REPO_MANIFEST[NAME]["sha256"] in str(info.value)
    monkeypatch.delenv("ZOO_CHECKPOINTS")  # the repository's folder (a copy here): restored from git
    monkeypatch.setattr(store, "PACKAGED", tmp_path / "no-wheel")
    monkeypatch.setattr(store, "REPOSITORY", folder)
    with pytest.raises(PretrainedError, match=r"restore it \(git checkout in the repository\)\.$"):
        zoo.load_pretrained(NAME)
