"""The RNN+HMM hybrid output of the taggers (``output="hmm"``, ``zoo.nets.hmm``): its statistics are the true counts
of the training tags (through the task too, whole split, across a resume and two DDP processes), its Viterbi is the
brute-force best path and honours the scheme, and it trains, decodes, saves, loads, predicts and exports like the
other outputs."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import lightning as L
import pytest
import torch
from conftest import assert_resume_is_exact, run_train
from conftest import quiet_trainer as trainer

import zoo
from datamodules.conll import CoNLLDataModule
from zoo.nets.crf import scheme_constraints
from zoo.nets.hmm import HMM
from zoo.nets.tagger import OUTPUTS, SequenceTagger

torch.set_num_threads(1)
BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
FIRST, LAST, CITIES = ["Peter", "Maria", "John", "Angela", "Ode"], ["Smith", "Meyer", "Ng"], ["Berlin", "Paris", "Rome"]


# -- a CoNLL-like corpus in BIOES, read as written (source and target scheme BIOES) -----------------------------------
def sentence(r: random.Random) -> list[tuple[str, str]]:
    """One of four shapes, so that starts, ends and transitions vary (single-word and two-word names)."""
    name = [(r.choice(FIRST), "B-PER"), (r.choice(LAST), "E-PER")] if r.random() < 0.6 else [(r.choice(FIRST), "S-PER")]
    city = [(r.choice(CITIES), "S-LOC")]
    shape = r.randrange(4)
    if shape == 0:
        return [*name, ("visited", "O"), *city, (".", "O")]
    if shape == 1:
        return [*city, ("welcomed", "O"), *name]
    if shape == 2:
        return [("yesterday", "O"), *name, ("left", "O"), *city]
    return name


def write_corpus(folder, sizes=(("train", 41), ("dev", 12), ("test", 12))):
    """train/dev/test column files (``word tag``); 41 training sentences, which no batch size of 4 x 2 divides."""
    folder.mkdir(exist_ok=True)
    for split, n in sizes:
        r = random.Random(split)
        text = "\n\n".join("\n".join(f"{w} {t}" for w, t in sentence(r)) for _ in range(n))
        (folder / f"{split}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def file_tags(path) -> list[list[str]]:
    return [[line.split()[-1] for line in block.splitlines()] for block in path.read_text().strip().split("\n\n")]


def true_counts(sequences: list[list], tags: list) -> dict[str, torch.Tensor]:
    """The counts by hand, in Python: tags, starts, ends and (previous, next) pairs, as the HMM's buffers."""
    K, index = len(tags), {t: i for i, t in enumerate(tags)}
    seqs = [[index[t] for t in s] for s in sequences]
    pairs = Counter((a, b) for s in seqs for a, b in zip(s, s[1:]))
    counts = {
        "tag_counts": Counter(t for s in seqs for t in s),
        "start_counts": Counter(s[0] for s in seqs),
        "end_counts": Counter(s[-1] for s in seqs),
    }
    out = {k: torch.tensor([c[i] for i in range(K)]) for k, c in counts.items()}
    out["transition_counts"] = torch.tensor([[pairs[i, j] for j in range(K)] for i in range(K)])
    return out


def padded(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, sequences))
    return torch.tensor([s + [-1] * (T - len(s)) for s in sequences]), torch.tensor([len(s) for s in sequences])


def dm(folder, **kw) -> CoNLLDataModule:
    return CoNLLDataModule(str(folder), source_scheme="BIOES", scheme="BIOES", batch_size=4, eval_batch_size=8, **kw)


def hmm_tagger(**kw):
    args = dict(word_dim=16, hidden_size=16, lr=1e-2, dropout=0.0, output="hmm", net_kwargs={"char_hidden": 8})
    return zoo.create_model("bilstm_crf", **{**args, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "bioes")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """An hmm tagger fitted for 6 epochs, and its trainer's checkpoint."""
    folder = tmp_path_factory.mktemp("trained")
    L.seed_everything(0)
    model = hmm_tagger()
    t = trainer(folder, max_epochs=6)
    t.fit(model, dm(corpus))
    t.save_checkpoint(folder / "hmm.ckpt")
    return model.eval(), t, folder / "hmm.ckpt"


# -- statistics -----------------------------------------------------------------------------------------------------
def test_counts_and_probabilities_are_the_true_smoothed_counts():
    """Counted in two batches (ragged, -1 padded), the buffers are the hand counts; the probabilities are
    (count + a) / (the row's total + a per allowed entry), each distribution summing to one over what is allowed, the
    end sharing the transitions' row; forbidden moves score NEG."""
    r = random.Random(0)
    seqs = [[r.randrange(5) for _ in range(r.randint(1, 6))] for _ in range(30)]
    allowed, a_start, a_end = scheme_constraints(BIO, "BIO")
    hmm = HMM(5, allowed, a_start, a_end, smoothing=0.5)
    hmm.count(*padded(seqs[:13]))
    hmm.count(*padded(seqs[13:]))
    expected = true_counts(seqs, list(range(5)))
    for name, value in expected.items():
        assert torch.equal(getattr(hmm, name), value), name
    c, a = {k: v.double() for k, v in expected.items()}, 0.5
    prior, trans, start, end = (x.double() for x in hmm.log_probs())
    torch.testing.assert_close(prior.exp(), (c["tag_counts"] + a) / (c["tag_counts"].sum() + 5 * a))
    total = sum(c["start_counts"][k] + a for k in range(5) if a_start[k])
    for j in range(5):
        want = float(torch.log((c["start_counts"][j] + a) / total)) if a_start[j] else -1e4
        assert float(start[j]) == pytest.approx(want, abs=1e-5)
    for i in range(5):
        row = sum(c["transition_counts"][i, k] + a for k in range(5) if allowed[i, k]) + c["end_counts"][i] + a
        for j in range(5):
            want = float(torch.log((c["transition_counts"][i, j] + a) / row)) if allowed[i, j] else -1e4
            assert float(trans[i, j]) == pytest.approx(want, abs=1e-5)
        assert float(end[i]) == pytest.approx(float(torch.log((c["end_counts"][i] + a) / row)), abs=1e-5)
    ok = torch.where(allowed, trans.exp(), 0.0).sum(1) + end.exp()
    torch.testing.assert_close(ok, torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    hmm.count(*padded(seqs[:2]), reset=True)
    assert int(hmm.tag_counts.sum()) == len(seqs[0]) + len(seqs[1])


def test_bad_counts_and_settings_are_refused():
    hmm = HMM(3)
    with pytest.raises(ValueError, match=r"tags must be in \[0, 3\) before each sentence's end"):
        hmm.count(torch.tensor([[0, 3]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 2\]"):
        hmm.count(torch.tensor([[0, 1]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        HMM(3, smoothing=0)
    with pytest.raises(ValueError, match="output must be one of"):
        SequenceTagger(num_words=5, num_chars=5, num_tags=3, output="hmmm")
    assert "hmm" in OUTPUTS


def test_the_task_counts_the_whole_training_split(corpus, tmp_path):
    """One batch of training (limit_train_batches=1), yet the counts are those of all 41 training sentences; the
    data's tag order maps the hand counts."""
    model = hmm_tagger()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(model, dm(corpus))
    expected = true_counts(file_tags(corpus / "train.txt"), model.hparams.tags)
    for name, value in expected.items():
        assert torch.equal(getattr(model.net.hmm, name).cpu(), value), name
    assert int(model.net.hmm.start_counts.sum()) == 41


# -- decoding -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", [None, "BIO", "BIOES"])
def test_viterbi_equals_brute_force(scheme):
    """Over every tag sequence of each sentence (lengths 1 to 4), scored by hand from the log-probabilities:
    log p(y_1) + sum [log softmax(logits) - log prior] + sum log p(y_t | y_t-1) + log p(end | y_n)."""
    torch.manual_seed(0)
    tags = BIO if scheme != "BIOES" else ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    K = len(tags)
    hmm = HMM(K, *(scheme_constraints(tags, scheme) if scheme else ()))
    hmm.count(torch.randint(0, K, (40, 6)), torch.randint(1, 7, (40,)))
    logits, lengths = 2 * torch.randn(6, 4, K), torch.tensor([4, 1, 3, 2, 4, 3])
    paths = hmm.viterbi(logits, lengths)
    prior, trans, start, end = hmm.log_probs()
    scaled = torch.log_softmax(logits, -1) - prior
    for b, n in enumerate(lengths.tolist()):
        every = torch.tensor(list(itertools.product(range(K), repeat=n)))  # (K^n, n)
        score = start[every[:, 0]] + end[every[:, -1]] + scaled[b, torch.arange(n), every].sum(1)
        score = score + trans[every[:, :-1], every[:, 1:]].sum(1)
        assert paths[b, :n].tolist() == every[score.argmax()].tolist() and (paths[b, n:] == -1).all()
        torch.testing.assert_close(
            hmm.path_score(logits[b : b + 1], paths[b : b + 1], lengths[b : b + 1])[0], score.max()
        )


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_decoding_honours_the_scheme(scheme):
    """Logits that push for ill-formed sequences (inside tags everywhere, random) and a HMM counted on ill-formed
    data: every decoded path is well-formed, the tagger's too (it constrains its HMM when it knows its scheme)."""
    tags = BIO if scheme == "BIO" else ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    allowed, a_start, a_end = scheme_constraints(tags, scheme)
    K = len(tags)
    net = SequenceTagger(num_words=20, num_chars=10, num_tags=K, output="hmm", tag_names=tags, scheme=scheme)
    net.hmm.count(torch.randint(0, K, (50, 8)), torch.full((50,), 8))  # counts of forbidden moves too
    inside = torch.tensor([t.startswith("I-") for t in tags]).float()
    logits = 4 * torch.randn(64, 9, K) + 6 * inside
    lengths = torch.randint(1, 10, (64,))
    for paths in (net.hmm.viterbi(logits, lengths), net.decode(logits, lengths)):
        for row, n in zip(paths.tolist(), lengths.tolist()):
            y = row[:n]
            assert a_start[y[0]] and a_end[y[-1]] and all(allowed[i, j] for i, j in zip(y, y[1:])), y
    free = SequenceTagger(num_words=20, num_chars=10, num_tags=K, output="hmm")
    free.hmm.count(torch.randint(0, K, (50, 8)), torch.full((50,), 8))
    assert bool(free.hmm.allowed.all())  # no scheme: nothing forbidden
    p = free.decode(logits, lengths)
    assert any(not allowed[i, j] for row, n in zip(p.tolist(), lengths.tolist()) for i, j in zip(row[:n], row[1:n]))


# -- training, round trips, the other paths --------------------------------------------------------------------------
def test_it_trains_and_beats_chance(trained, corpus):
    """Span F1 far above chance, token accuracy above always-"O" (the majority tag), and decoding is the HMM's:
    the trained tagger's predictions are the Viterbi of its posteriors over its counted HMM."""
    model, t, _ = trained
    gold = [tag for s in file_tags(corpus / "dev.txt") for tag in s]
    majority = Counter(gold).most_common(1)[0][1] / len(gold)
    assert t.callback_metrics["val_f1"] > 0.8 and t.callback_metrics["val_acc"] > majority + 0.2
    assert int(model.net.hmm.tag_counts.sum()) == sum(map(len, file_tags(corpus / "train.txt")))
    out = model.tag("Maria Meyer visited Paris .")
    assert out["spans"] == [("Maria Meyer", "PER", 0, 2), ("Paris", "LOC", 3, 4)]


def test_checkpoint_and_published_weights_decode_identically(trained, corpus, tmp_path, monkeypatch):
    """A train.py checkpoint and published (float16-or-not safetensors) weights keep the counts exactly and
    decode the validation split identically."""
    from zoo.checkpoint import load_checkpoint
    from zoo.weights.publish import publish

    model, _, ckpt = trained
    data = dm(corpus)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    words, chars, lengths, _ = batch
    with torch.no_grad():
        want = model.net.decode(model(words, chars, lengths), lengths)
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    publish(ckpt, "toy", "configs/bilstm_crf.conll2003.yaml")
    for loaded in (load_checkpoint(ckpt).eval(), zoo.load_pretrained("bilstm_crf.toy")):
        assert loaded.net.output == "hmm"
        for name in ("tag_counts", "start_counts", "transition_counts", "end_counts"):
            assert torch.equal(getattr(loaded.net.hmm, name), getattr(model.net.hmm, name)), name
        with torch.no_grad():
            got = loaded.net.decode(loaded(words, chars, lengths), lengths)
        assert torch.equal(got, want)
        assert loaded.tag("John Ng visited Rome .")["tags"] == model.tag("John Ng visited Rome .")["tags"]


def test_zoo_predict(trained, capsys):
    from zoo.cli.main import main

    model, _, ckpt = trained
    assert main(["predict", str(ckpt), "Angela Smith visited Berlin .", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["output"]["tags"] == model.tag("Angela Smith visited Berlin .")["tags"]
    assert row["output"]["spans"] == [["Angela Smith", "PER", 0, 2], ["Berlin", "LOC", 3, 4]]


@pytest.mark.slow
def test_onnx_export(trained, tmp_path):
    """``zoo export`` writes an ONNX graph whose outputs, the tags of the HMM's Viterbi (in the graph) too, equal
    PyTorch's on the parity inputs (ragged lengths, other sizes); ~20 s."""
    from zoo.cli.main import main

    _, _, ckpt = trained
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path)]) == 0
    sidecar = json.loads(next(tmp_path.glob("*.json")).read_text())
    outputs = {o["name"]: o for o in sidecar["files"][0]["outputs"]}
    assert sidecar["parity"]["passed"] and set(outputs) == {"emissions", "tags"} and "HMM" in outputs["tags"]["doc"]


def test_resume_mid_epoch_keeps_the_statistics(corpus, tmp_path):
    """Stopped after batch 3 of epoch 2 and resumed: the weights and counts of an unbroken run, and the counts in
    the checkpoint are the training split's."""
    ckpt = assert_resume_is_exact(tmp_path, lambda: hmm_tagger(dropout=0.3), lambda: dm(corpus))
    tags = ckpt["hyper_parameters"]["tags"]
    for name, value in true_counts(file_tags(corpus / "train.txt"), tags).items():
        assert torch.equal(ckpt["state_dict"][f"net.hmm.{name}"], value), name


class SaveCounts(L.Callback):
    """Each DDP process saves its HMM counts as ``rank<r>.pt`` in ``folder`` when training ends."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        counts = {k: v.cpu() for k, v in pl_module.net.hmm.state_dict().items() if k.endswith("_counts")}
        torch.save(counts, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_ddp_processes_count_the_true_statistics(corpus, tmp_path):
    """ddp_spawn, 2 CPU processes: 41 training sentences in batches of 4 (Lightning's sampler pads a shard with a
    repeated sentence); both processes hold the exact counts of the split, and so does the model that comes back."""
    model = hmm_tagger()
    t = trainer(
        tmp_path,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        limit_val_batches=1,
        callbacks=[SaveCounts(tmp_path)],
    )
    t.fit(model, dm(corpus))
    expected = true_counts(file_tags(corpus / "train.txt"), model.hparams.tags)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], value) and torch.equal(ranks[1][name], value), name
        assert torch.equal(getattr(model.net.hmm, name), value), name


@pytest.mark.slow
def test_train_py_chooses_hmm_by_net_kwargs(corpus, tmp_path):
    args = [
        "fit",
        "--model",
        "bilstm_crf",
        "--data",
        "conll",
        "--data.path",
        str(corpus),
        "--data.source_scheme",
        "BIOES",
    ]
    res = run_train(
        [*args, "--model.hidden_size", "8", "--model.net_kwargs.output", "hmm", "--trainer.fast_dev_run", "2"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "HMM statistics counted from the training set: 41 sentences" in res.stdout + res.stderr
