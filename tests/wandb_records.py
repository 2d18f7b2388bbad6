"""Read an offline W&B run back from its ``run-*.wandb`` file: the records W&B wrote (config, history rows,
summary, files), parsed with W&B's own protobuf classes. The file is LevelDB-log framed: a 7-byte header
(``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc, length, type)."""

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk
        elif length == 0:
            break


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


class WandbRun:
    """``config`` (key -> value), ``history`` (one dict per logged row), ``summary``, ``files`` (saved paths)."""

    def __init__(self, run_folder: Path) -> None:
        from wandb.proto import wandb_internal_pb2

        (path,) = Path(run_folder).glob("run-*.wandb")
        self.folder = Path(run_folder)
        self.config: dict = {}
        self.history: list[dict] = []
        self.summary: dict = {}
        self.files: list[str] = []
        self.run: dict = {}
        self.exited = False  # the run's last record is there
        # client id -> name, type, files {path inside it: local file}, aliases, metadata, digests {path: md5}, digest
        self.artifacts: dict[str, dict] = {}
        for payload in _payloads(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "config":
                for item in record.config.update:
                    self.config[_key(item)] = json.loads(item.value_json)
            elif kind == "run":
                self.run = {
                    "project": record.run.project,
                    "name": record.run.display_name,
                    "group": record.run.run_group,
                    "tags": list(record.run.tags),
                    "id": record.run.run_id,
                }
                for item in record.run.config.update:
                    self.config[_key(item)] = json.loads(item.value_json)
            elif kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                for item in record.summary.update:
                    self.summary[_key(item)] = json.loads(item.value_json)
            elif kind == "files":
                self.files += [f.path for f in record.files.files]
            elif kind == "exit":
                self.exited = True
            elif kind == "artifact":
                a = record.artifact
                files = {c.path: c.local_path for c in a.manifest.contents}
                self.artifacts[a.client_id] = {"name": a.name, "type": a.type, "files": files}
                self.artifacts[a.client_id] |= {  # in the order logged
                    "aliases": list(a.aliases),
                    "metadata": json.loads(a.metadata or "{}"),
                    "digests": {c.path: c.digest for c in a.manifest.contents},  # base64 md5, as W&B checks them
                    "digest": a.digest,
                }
        unwrap = {k: v["value"] for k, v in self.config.items() if isinstance(v, dict) and "value" in v}
        self.config |= unwrap

    def curve(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]

    def media(self, key: str) -> list[dict]:
        """Every logged value of the media ``key`` (e.g. ``media/gradcam``), its fields as W&B wrote them."""
        prefix = key + "/"
        rows = [{k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)} for row in self.history]
        return [r for r in rows if r]

    def table(self, key: str, index: int = -1) -> dict:
        """The ``index``-th logged ``wandb.Table`` of ``key`` (``columns``, ``data``) with its media cells resolved
        (each image cell gains ``local_path``): the run's own file spells them as their type name only, so the table
        is read from the run-table artifact W&B staged for it (named by the client id in its ``artifact_path``)."""
        logged = self.media(key)[index]
        client_id = logged["artifact_path"].removeprefix("wandb-client-artifact://").split("/", 1)[0]
        files = self.artifacts[client_id]["files"]
        table = json.loads(Path(next(p for k, p in files.items() if k.endswith(".table.json"))).read_text())
        for row in table["data"]:
            for cell in row:
                if isinstance(cell, dict) and cell.get("path") in files:
                    cell["local_path"] = files[cell["path"]]
        return table


def finished_run(run_folder: Path, timeout: float = 30.0) -> WandbRun:
    """The run of ``run_folder`` once its exit record is written: in-process, ``finish()`` returns before W&B's
    service has written the records out."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            run = WandbRun(run_folder)
        except Exception:  # a record half written
            run = None
        if (run is not None and run.exited) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert run is not None and run.exited, f"no exit record in {run_folder} after {timeout} s"
    return run
