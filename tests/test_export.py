"""zoo export: the nets' export paths compute what their training paths compute, every family exports (ONNX checked
with onnxruntime, torch.export programs reloaded) and passes its parity check on fresh inputs, a graph that differs
fails the export, and the sidecar says how to feed the graphs."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
import torch

import zoo
from zoo.cli.main import main
from zoo.export import ParityError, export_model, greedy_loop
from zoo.export import _run as run_mod
from zoo.export._families import family_graphs
from zoo.nets.crf import CRF, scheme_constraints
from zoo.nets.masked_rnn import use_masked
from zoo.nets.recurrent import RecurrentClassifier, RecurrentEncoder
from zoo.tasks.tagging import Tagger
from zoo.tasks.translation import Seq2Seq

torch.set_num_threads(1)
LETTERS = ["<pad>", "<unk>", *"abcdefghij"]
WORD = r"\w+|[^\w\s]"


def states(state):
    return list(state) if isinstance(state, tuple) else [state]


# -- the masked paths equal the packed ones (eager) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "cell,bidirectional,layers,batch_first",
    list(itertools.product(["rnn", "lstm", "gru"], [False, True], [1, 2], [True]))
    + [("lstm", True, 2, False), ("gru", False, 1, False)],
    ids=lambda v: str(v),
)
def test_masked_recurrence_equals_packing(cell, bidirectional, layers, batch_first):
    """Outputs (zeros after the end) and final states (LSTM cells included) as packing gives them, from a given
    initial state too; a sequence of length 1 and one of full length in the batch."""
    torch.manual_seed(0)
    enc = RecurrentEncoder(
        cell=cell, vocab_size=12, embed_dim=6, hidden_size=5, num_layers=layers, bidirectional=bidirectional,
        batch_first=batch_first,
    ).eval()  # fmt: skip
    x, lengths = torch.randint(1, 12, (4, 9)), torch.tensor([9, 1, 6, 3])
    x = x if batch_first else x.T
    D = 2 if bidirectional else 1
    h0 = [torch.randn(layers * D, 4, 5) for _ in range(2 if cell == "lstm" else 1)]
    for init in (None, tuple(h0) if cell == "lstm" else h0[0]):
        packed = enc(x, lengths, init)
        masked = use_masked(enc)(x, lengths, init)
        use_masked(enc, False)
        torch.testing.assert_close(masked[0], packed[0], atol=1e-6, rtol=0)
        for a, b in zip(states(masked[1]), states(packed[1])):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention", "none"])
def test_masked_classifier_equals_packed(pooling):
    torch.manual_seed(1)
    net = RecurrentClassifier(
        cell="gru", vocab_size=12, embed_dim=6, hidden_size=5, num_layers=2, bidirectional=True, num_classes=3,
        pooling=pooling,
    ).eval()  # fmt: skip
    x, lengths = torch.randint(1, 12, (5, 8)), torch.tensor([8, 2, 1, 5, 7])
    packed = net(x, lengths)
    torch.testing.assert_close(use_masked(net)(x, lengths), packed, atol=1e-6, rtol=0)


def tiny_tagger(char_encoder: str = "lstm", arch: str = "bilstm_crf") -> Tagger:
    torch.manual_seed(2)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    return Tagger(
        arch=arch, words=["<pad>", "<unk>", "eu", "rejects", "german", "call", "peter"], chars=LETTERS + list("EUGP"),
        tags=tags, tag_scheme="BIO", word_dim=6, hidden_size=5, char_encoder=char_encoder, dropout=0.0,
        net_kwargs={"char_dim": 4, "char_hidden": 3, "casing_dim": 3},
    ).eval()  # fmt: skip


@pytest.mark.parametrize("char_encoder", ["lstm", "cnn"])
def test_masked_tagger_equals_packed(char_encoder):
    """Characters read without boolean indexing (words with no character, past a sentence's end, included) and the
    word encoder unpacked: the same emissions and tags."""
    task = tiny_tagger(char_encoder)
    words, chars, lengths = task._encode([["EU", "rejects", "German", "call"], ["Peter"], ["x", "yy"]])
    with torch.no_grad():
        packed = task(words, chars, lengths)
        use_masked(task.net)
        masked = task(words, chars, lengths)
    torch.testing.assert_close(masked, packed, atol=1e-6, rtol=0)
    assert torch.equal(task.net.decode(masked, lengths), task.net.decode(packed, lengths))


@pytest.mark.parametrize("constrained", [False, True])
def test_crf_viterbi_of_lengths_equals_decode(constrained):
    """The sort-free Viterbi gives decode's paths for prefix masks (lengths 1 to T, T = 1 included)."""
    torch.manual_seed(3)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    crf = CRF(5, *(scheme_constraints(tags, "BIO") if constrained else ()))
    for T in (1, 2, 13):
        e = torch.randn(16, T, 5)
        lengths = torch.randint(1, T + 1, (16,))
        mask = torch.arange(T)[None] < lengths[:, None]
        assert torch.equal(crf.viterbi(e, lengths), crf.decode(e, mask))
    with pytest.raises(ValueError, match="length 0"):
        crf.viterbi(torch.randn(2, 3, 5), torch.tensor([3, 0]))


def save_checkpoint(model, path):
    """What train.py's checkpoints hold of a model (zoo.checkpoint reads these two keys)."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


# -- tiny nets of every family: torch.export programs, reloaded, equal PyTorch on fresh inputs -------------------------
def tiny_models() -> dict:
    prep = {"input_size": [3, 32, 32], "scale": "uint8 / 255", "mean": [0.5] * 3, "std": [0.25] * 3}
    spec = {"tokenizer": "word", "lowercase": False, "pattern": WORD, "vocab": ["<pad>", "<unk>", "<bos>", "<eos>"]}
    src = {**spec, "vocab": spec["vocab"] + ["Ein", "Mann", "Hunde", "."]}
    tgt = {**spec, "vocab": spec["vocab"] + ["a", "man", "dogs", "."]}
    s2s = {"embed_dim": 6, "hidden_size": 5, "dropout": 0.0}
    return {
        "image": lambda: zoo.create_model("lenet5", num_classes=3, preprocessing=prep, classes=["a", "b", "c"]),
        "sequence": lambda: zoo.create_model(
            "lstm_classifier",
            vocab=LETTERS,
            classes=["x", "y", "z"],
            embed_dim=6,
            hidden_size=5,
            bidirectional=True,
            pooling="attention",
        ),  # fmt: skip
        "language_model": lambda: zoo.create_model("gru_lm", vocab=LETTERS, embed_dim=6, hidden_size=5, num_layers=2),
        "tagging": lambda: tiny_tagger("cnn", "bigru_crf"),
        "seq2seq": lambda: Seq2Seq(
            arch="seq2seq_lstm_attn",
            src_spec=src,
            tgt_spec=tgt,
            **s2s,
            net_kwargs={"attention": "additive", "input_feeding": True},
        ),  # fmt: skip
        "seq2seq_no_attention": lambda: Seq2Seq(arch="seq2seq_gru", src_spec=src, tgt_spec=tgt, **s2s),
    }


HEAVY = {"sequence", "tagging", "seq2seq_no_attention"}  # 3-7 s each; the published entries cover these families


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f for f in tiny_models()]
)
def test_tiny_model_of_every_family_exports_with_parity(family, tmp_path):
    torch.manual_seed(4)
    model = tiny_models()[family]().eval()
    sidecar = export_model(model, "torch", tmp_path, "tiny")
    assert sidecar["parity"]["passed"] and sidecar["parity"]["max_abs_diff"] <= 1e-4
    for f in sidecar["files"]:
        assert (tmp_path / f["file"]).is_file() and f["parity"]["inputs"]
        assert hashlib.sha256((tmp_path / f["file"]).read_bytes()).hexdigest() == f["sha256"]
    assert json.loads((tmp_path / "tiny.json").read_text()) == json.loads(json.dumps(sidecar))
    if family.startswith("seq2seq"):  # the Python loop over the reloaded programs carries state (and cell, feed)
        graphs, _ = family_graphs(model, "seq2seq")
        runs = [run_mod.load(g, "torch", tmp_path / f["file"]) for g, f in zip(graphs, sidecar["files"])]

        def named(run, graph):
            out = [p.name for p in graph.outputs]
            return lambda feeds: dict(zip(out, run(*(torch.from_numpy(feeds[p.name]) for p in graph.inputs))))

        src, lengths = torch.tensor([[4, 5, 7], [6, 0, 0]]), torch.tensor([3, 1])
        ids = sidecar["special_ids"]
        got = greedy_loop(*(named(r, g) for r, g in zip(runs, graphs)), src.numpy(), lengths.numpy(), ids, 1.5, 3)
        assert got == [h.tokens for h in model.net.greedy(src, lengths, 1.5, 3)]


def test_a_graph_that_differs_fails_the_check(tmp_path, monkeypatch, capsys):
    """Weights changed after export: the written file no longer matches, the check says by how much. And an export
    whose written graph differs fails with exit 1 in one line, its files removed."""
    model = tiny_models()["image"]().eval()
    export_model(model, "torch", tmp_path, "tiny")
    (graph,), _ = family_graphs(model, "image")
    with torch.no_grad():
        list(model.net.parameters())[-1].add_(0.01)  # the classifier's bias: every logit moves by 0.01
    with pytest.raises(ParityError, match=r"output 'logits' .* differs from PyTorch by .* \(tolerance 0.0001\)"):
        run_mod.compare(graph, run_mod.load(graph, "torch", tmp_path / "tiny.pt2"))

    real_load, out = run_mod.load, tmp_path / "out"

    def off_by_a_little(graph, fmt, path):
        run = real_load(graph, fmt, path)
        return lambda *inputs: tuple(o + 1e-3 if o.dtype.kind == "f" else o for o in run(*inputs))

    monkeypatch.setattr("zoo.export.load", off_by_a_little)
    code = main(["export", str(save_checkpoint(model, tmp_path / "cnn.ckpt")), "--format", "torch", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "parity check failed" in err and "differs from PyTorch by 0.001" in err and "nothing written" in err
    assert not list(out.glob("*"))


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    for argv, says in [
        (["no_such_model.tag"], "no_such_model"),
        ([str(tmp_path / "missing.ckpt")], "no checkpoint at"),
    ]:
        assert main(["export", *argv, "--format", "onnx", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err
    real = run_mod.importlib.import_module

    def no_onnxruntime(name, *a):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real(name, *a)

    monkeypatch.setattr(run_mod.importlib, "import_module", no_onnxruntime)
    assert main(["export", "resnet20.cifar10", "--format", "onnx", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'lightning-zoo[export]'" in err and "onnxruntime" in err


def test_a_family_without_export_is_refused(tmp_path, capsys, monkeypatch):
    import toy_plugin

    from zoo import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "_TASKS", dict(_registry._TASKS))
    toy_plugin.register()
    ckpt = save_checkpoint(zoo.create_model("toy_mlp"), tmp_path / "toy.ckpt")
    assert main(["export", str(ckpt), "--format", "torch", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'toy_regression' model, which zoo export does not cover" in err


def test_a_checkpoint_exports_under_its_model_name(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_models()["language_model"](), tmp_path / "best.ckpt")
    assert main(["export", str(ckpt), "--format", "torch", "--out", str(tmp_path / "out")]) == 0
    sidecar = json.loads((tmp_path / "out" / "gru_lm.best.json").read_text())
    assert sidecar["source"] == str(ckpt) and sidecar["vocab"] == LETTERS
    assert [p["name"] for p in sidecar["files"][0]["outputs"]] == ["logits", "state_out"]
    assert "parity passed" in capsys.readouterr().out


# -- the published entry of every family through the CLI, as ONNX (onnxruntime) ------------------------------------
PUBLISHED = {
    "image": "resnet20.cifar10",
    "sequence": "gru_classifier.names",
    "language_model": "lstm_lm.tinyshakespeare",
    "tagging": "bilstm_crf.conll2003",
    "seq2seq": "seq2seq_gru_attn.multi30k_de_en",
}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """``zoo export NAME --format onnx`` of each published entry, once per module: family -> (folder, sidecar)."""
    done = {}

    def get(family: str):
        if family not in done:
            name, out = PUBLISHED[family], tmp_path_factory.mktemp(family)
            assert main(["export", name, "--format", "onnx", "--out", str(out)]) == 0
            done[family] = out, json.loads((out / f"{name}.json").read_text())
        return done[family]

    return get


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("family", list(PUBLISHED))
def test_published_entry_exports_to_onnx_with_parity(family, published):
    out, sidecar = published(family)
    assert sidecar["format"] == "onnx" and sidecar["task"] == family and sidecar["parity"]["passed"]
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and "onnxruntime" in sidecar["versions"]
    for f in sidecar["files"]:
        s = session(out / f["file"])
        assert [i.name for i in s.get_inputs()] == [p["name"] for p in f["inputs"]]
        assert [o.name for o in s.get_outputs()] == [p["name"] for p in f["outputs"]]
        assert f["opset"] >= 17 and hashlib.sha256((out / f["file"]).read_bytes()).hexdigest() == f["sha256"]
        for p in f["inputs"]:
            assert "batch" in p["shape"]  # dynamic batch everywhere
    if family == "tagging":
        assert sidecar["tags"][0] == "O" and sidecar["tag_scheme"] == "BIOES"
        assert sidecar["preprocessing"]["casing"]["computed"] == "in the graph, from chars"
        assert {o["name"] for o in sidecar["files"][0]["outputs"]} == {"emissions", "tags"}
    if family == "image":
        assert sidecar["preprocessing"]["mean"] == [0.4914, 0.4822, 0.4465] and len(sidecar["classes"]) == 10
    if family in ("sequence", "tagging"):
        assert sidecar["files"][0]["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "length"}


def test_seq2seq_search_loop_in_python_matches_greedy(published):
    """The sidecar says the search stays in Python; the reference loop over the two ONNX graphs writes what the
    model's own greedy decoding writes."""
    out, sidecar = published("seq2seq")
    assert "in Python" in sidecar["search"]["runs"] and sidecar["special_ids"]["bos"] == 2
    encoder, step = (session(out / f["file"]) for f in sidecar["files"])
    names = lambda s: [o.name for o in s.get_outputs()]  # noqa: E731
    task = zoo.load_pretrained(PUBLISHED["seq2seq"])
    src, lengths = task._batch(["Ein Mann fährt Fahrrad .", "Zwei Hunde spielen im Schnee .", "Eine Frau"])
    tokens = greedy_loop(
        lambda feeds: dict(zip(names(encoder), encoder.run(None, feeds))),
        lambda feeds: dict(zip(names(step), step.run(None, feeds))),
        src.numpy(), lengths.numpy(), sidecar["special_ids"], sidecar["search"]["max_len_a"],
        sidecar["search"]["max_len_b"],
    )  # fmt: skip
    expected = task.net.greedy(src, lengths, task.hparams.max_len_a, task.hparams.max_len_b)
    assert tokens == [h.tokens for h in expected] and all(tokens)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PUBLISHED.values(), "bilstm_crf.ud_en_ewt_upos"])
def test_published_entry_exports_as_torch_program(name, tmp_path):
    assert main(["export", name, "--format", "torch", "--out", str(tmp_path)]) == 0
    sidecar = json.loads((tmp_path / f"{name}.json").read_text())
    assert sidecar["parity"]["passed"] and sidecar["parity"]["max_abs_diff"] <= 1e-4
