"""Taggers: CoNLL / CoNLL-U reading, tag-scheme conversion, conlleval-exact span F1, training, tag() on raw text."""

import random

import lightning as L
import pytest
import torch
from conftest import quiet_trainer as trainer
from conftest import run_train, slow_except

import zoo
from datamodules import DatasetError
from datamodules.conll import (
    CoNLLDataModule,
    CoNLLUDataModule,
    collate_tagged,
    convert_scheme,
    read_columns,
    read_conllu,
)
from datamodules.contract import MAX_WORD_LEN
from zoo.nets.casing import CASES, casing, char_classes
from zoo.tasks.spans import SpanF1, chunks

TAGGERS = zoo.list_models(task="tagging")
PEOPLE = ["Peter", "Maria", "John", "Angela"]
PLACES = ["Berlin", "Paris", "London"]


def column_file(path, n=150, seed=0):
    """A CoNLL-2003-like 4-column IOB1 file: '<name> <surname> visited <place> .' with a DOCSTART."""
    r = random.Random(seed)
    lines = ["-DOCSTART- -X- O O", ""]
    for _ in range(n):
        who = [r.choice(PEOPLE), r.choice(["Smith", "Meyer"])]
        rows = [(who[0], "NNP", "I-PER"), (who[1], "NNP", "I-PER"), ("visited", "VBD", "O")]
        rows += [(r.choice(PLACES), "NNP", "I-LOC"), (".", ".", "O")]
        lines += [f"{w} {pos} I-NP {t}" for w, pos, t in rows] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conll_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("conll")
    for name, seed in (("train.txt", 0), ("dev.txt", 1), ("test.txt", 2)):
        column_file(d / name, 150 if name == "train.txt" else 30, seed)
    return d


def random_tags(n, scheme_tags, r):
    return [r.choice(scheme_tags) for _ in range(n)]


# -- scoring ----------------------------------------------------------------------------------------------------
def test_span_f1_equals_seqeval_on_ill_formed_sequences():
    """conlleval's chunking of any sequence, even an ill-formed one (I after O, E without B ...), as seqeval's."""
    seqeval = pytest.importorskip("seqeval.metrics")
    r = random.Random(0)
    for tags in (["O", "B-PER", "I-PER", "I-LOC", "B-LOC"], ["O", "B-X", "I-X", "E-X", "S-X", "S-Y", "E-Y", "I-Y"]):
        gold = [random_tags(r.randint(1, 12), tags, r) for _ in range(300)]
        pred = [[t if r.random() < 0.7 else r.choice(tags) for t in g] for g in gold]
        assert_span_scores_equal_seqeval(seqeval, tags, gold, pred)


def assert_span_scores_equal_seqeval(seqeval, tags: list[str], gold: list[list[str]], pred: list[list[str]]) -> None:
    """SpanF1 over (pred, gold) sentences gives seqeval's precision, recall and F1, overall and F1 per type."""
    metric, index = SpanF1(tags), {t: i for i, t in enumerate(tags)}
    for p, g in zip(pred, gold):
        metric.update(
            torch.tensor([[index[t] for t in p]]), torch.tensor([[index[t] for t in g]]), torch.tensor([len(g)])
        )
    ours = metric.compute()
    assert float(ours["f1"]) == pytest.approx(seqeval.f1_score(gold, pred), abs=1e-6)
    assert float(ours["precision"]) == pytest.approx(seqeval.precision_score(gold, pred), abs=1e-6)
    assert float(ours["recall"]) == pytest.approx(seqeval.recall_score(gold, pred), abs=1e-6)
    report = seqeval.classification_report(gold, pred, output_dict=True, zero_division=0)
    for kind in metric.types:
        assert float(ours[f"f1_{kind}"]) == pytest.approx(report[kind]["f1-score"], abs=1e-6)


@pytest.mark.real_data("conll2003")
def test_scheme_conversion_keeps_the_chunks(real_data_dir):
    sentences = read_columns(real_data_dir / "conll2003" / "eng.testa")
    for _, tags in sentences:
        bio = convert_scheme(tags, "IOB1", "BIO")
        assert (
            chunks(bio)
            == chunks(convert_scheme(tags, "IOB1", "BIOES"))
            == chunks(convert_scheme(tags, "IOB1", "BILOU"))
        )
        assert convert_scheme(convert_scheme(tags, "IOB1", "BIOES"), "BIOES", "BIO") == bio
    assert convert_scheme(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1", "BIOES") == [
        "B-PER",
        "E-PER",
        "S-PER",
        "O",
        "S-LOC",
    ]
    assert convert_scheme(["B-PER", "E-PER", "S-PER"], "BIOES", "IOB1") == ["I-PER", "I-PER", "B-PER"]


def test_casing_from_characters_matches_the_string_rules():
    words = ["hello", "HELLO", "Hello", "2024", "B2B", "x-ray", "McDonald", "!", "eBay", "ÉCOLE", "é"]
    chars = sorted({c for w in words for c in w})
    vocab = ["<pad>", "<unk>", *chars]
    ids = torch.zeros(1, len(words), max(map(len, words)), dtype=torch.long)
    for j, w in enumerate(words):
        ids[0, j, : len(w)] = torch.tensor([vocab.index(c) for c in w])
    got = [CASES[i] for i in casing(ids, char_classes(vocab))[0].tolist()]

    def rule(w):
        if w.isdigit():
            return "numeric"
        if any(c.isdigit() for c in w):
            return "has_digit"
        return "lower" if w.islower() else "upper" if w.isupper() else "title" if w[0].isupper() else "other"

    assert got == [rule(w) for w in words]


# -- data -------------------------------------------------------------------------------------------------------
def test_column_files_and_bad_lines(conll_dir, tmp_path):
    sentences = read_columns(conll_dir / "train.txt")
    assert len(sentences) == 150 and sentences[0][1] == ["I-PER", "I-PER", "O", "I-LOC", "O"]
    dm = CoNLLDataModule(str(conll_dir))
    dm.setup("fit")
    assert set(dm.tags.itos) == {"O", "B-PER", "E-PER", "S-LOC"}
    words, chars, lengths, tags = next(iter(dm.val_dataloader()))
    assert words.shape == tags.shape and chars.shape[:2] == words.shape and (lengths == 5).all()
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (bad / name).write_text((conll_dir / name).read_text())
    lines = (bad / "dev.txt").read_text().splitlines()
    lines[3] = "visited NNP O"  # three columns among four
    (bad / "dev.txt").write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"dev.txt, line 4: 3 columns where the file has 4"):
        CoNLLDataModule(str(bad)).setup("fit")
    (bad / "dev.txt").write_text((conll_dir / "dev.txt").read_text().replace("I-LOC", "I-GPE"))
    with pytest.raises(DatasetError, match=r"tags \['S-GPE'\] appear in val/test but never in train"):
        CoNLLDataModule(str(bad)).setup("fit")
    with pytest.raises(DatasetError, match="no folder"):
        CoNLLDataModule(str(tmp_path / "missing")).setup("fit")
    with pytest.raises(ValueError, match="scheme must be one of"):
        CoNLLDataModule(scheme="BIOX")


def test_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    rows = [
        "# sent_id = 1",
        "# text = Don't go.",
        "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_",
        "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_",
        "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_",
        "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_",
        "3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t0:root\t_",
        "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_",
        "",
    ]
    (tmp_path / "x-ud-train.conllu").write_text("\n".join(rows) + "\n")
    assert read_conllu(tmp_path / "x-ud-train.conllu") == [(["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"])]
    assert read_conllu(tmp_path / "x-ud-train.conllu", "xpos")[0][1] == ["VBP", "RB", "VB", "."]
    (tmp_path / "y-ud-train.conllu").write_text("1\tDo\tdo\tAUX\n")
    with pytest.raises(DatasetError, match="line 1: 4 tab-separated columns, CoNLL-U has 10"):
        read_conllu(tmp_path / "y-ud-train.conllu")


@pytest.mark.real_data("conll2003", "ud_en_ewt")
def test_real_files(real_data_dir):
    dm = CoNLLDataModule(data_dir=str(real_data_dir))
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [14041, 3250, 3453]  # published counts
    assert sum(len(x[0]) for x in dm.datasets["test"]) == 46435 and len(dm.tags) == 17
    ud = CoNLLUDataModule(data_dir=str(real_data_dir))
    ud.setup("fit")
    assert [len(ud.datasets[s]) for s in ("train", "val", "test")] == [12544, 2001, 2077] and len(ud.tags) == 17


# -- the task ---------------------------------------------------------------------------------------------------
def small(name="bilstm_crf", **kw):
    return zoo.create_model(name, word_dim=16, hidden_size=16, lr=1e-2, dropout=0.0, **kw)


def test_training_learns_the_fixture_and_tags_raw_text(conll_dir, tmp_path):
    L.seed_everything(0)
    model = small()
    t = trainer(tmp_path, max_epochs=6)
    t.fit(model, CoNLLDataModule(str(conll_dir)))
    assert t.callback_metrics["val_f1"] > 0.9 and t.callback_metrics["val_score"] == t.callback_metrics["val_f1"]
    out = model.tag("Maria Meyer visited Paris.")
    assert out["tokens"] == ["Maria", "Meyer", "visited", "Paris", "."]
    assert out["spans"] == [("Maria Meyer", "PER", 0, 2), ("Paris", "LOC", 3, 4)]
    long = model.tag(" ".join(["Paris"] * 300))  # far longer than any training sentence
    assert len(long["tags"]) == 300
    assert model.tag([["Zürich", "?"]])[0]["tokens"] == ["Zürich", "?"]  # unknown characters and words
    with pytest.raises(ValueError, match=r"sentence 0 \('   '\) is empty or only whitespace"):
        model.tag("   ")


@pytest.mark.parametrize("output", ["softmax", "perceptron", "hinge", "hmm"])
def test_other_output_layers_train(output, conll_dir, tmp_path):
    L.seed_everything(0)
    model = small(output=output) if output != "softmax" else small("bilstm_softmax")
    t = trainer(tmp_path, max_epochs=4)
    t.fit(model, CoNLLDataModule(str(conll_dir)))
    assert t.callback_metrics["val_f1"] > 0.5


def test_pos_tags_are_scored_by_accuracy(tmp_path, conll_dir):
    L.seed_everything(0)
    model = small()
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, CoNLLDataModule(str(conll_dir), tag_column=1, source_scheme="BIO", scheme="BIO"))  # POS column
    assert model.hparams.tag_scheme is None and "val_f1" not in t.callback_metrics
    assert t.callback_metrics["val_score"] == t.callback_metrics["val_acc"]


@pytest.mark.parametrize("name", TAGGERS, ids=TAGGERS)
def test_train_py_taggers(name, conll_dir, tmp_path):
    args = ["fit", "--model", name, "--data", "conll", "--data.path", str(conll_dir), "--model.hidden_size", "8"]
    res = run_train([*args, "--trainer.fast_dev_run", "2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run folder: runs/{name}-conll/version_0" in res.stdout


@pytest.mark.parametrize("data", ["conll", "conllu"])
@pytest.mark.parametrize("name", slow_except(TAGGERS, {"bilstm_crf"}, str))
@pytest.mark.real_data("conll2003", "ud_en_ewt")
def test_train_py_taggers_on_real_data(name, data, real_data_dir, tmp_path):
    args = ["fit", "--model", name, "--data", data, "--data.data_dir", str(real_data_dir), "--model.hidden_size", "8"]
    res = run_train([*args, "--trainer.fast_dev_run", "2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


def test_published_tagger_works_alone(conll_dir, tmp_path, monkeypatch):
    from zoo.weights.publish import publish

    L.seed_everything(0)
    model = small()
    t = trainer(tmp_path, max_epochs=4)
    t.fit(model, CoNLLDataModule(str(conll_dir)))
    t.save_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    entry = publish(tmp_path / "last.ckpt", "toy", "configs/bilstm_crf.conll2003.yaml")
    assert {"test_f1", "test_f1_PER", "val_f1", "test_acc"} <= set(entry.metrics)
    loaded = zoo.load_pretrained("bilstm_crf.toy")
    assert (
        loaded.tag("John Smith visited London .")["spans"] == model.eval().tag("John Smith visited London .")["spans"]
    )


def test_word_dropout_replaces_words_in_training_only():
    from zoo.nets.tagger import SequenceTagger

    net, seen = SequenceTagger(num_words=50, num_chars=10, num_tags=3, word_dropout=0.5), []
    net.words.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    words, chars = torch.randint(2, 50, (4, 20)), torch.randint(1, 10, (4, 20, 5))
    for mode in (True, False):
        net.train(mode)(words, chars, torch.ones_like(words), torch.full((4,), 20))
    assert 0.3 < float((seen[0] == 1).float().mean()) < 0.7 and torch.equal(seen[1], words)


def test_raw_words_are_cut_where_the_data_cut_them(conll_dir, tmp_path):
    """A tagger trained on words cut at the DataModule's max_word_len reads raw text cut there too (not at the
    default 30): tag() feeds the net what the DataModule's encoding of the same sentence gives. The number is kept in
    checkpoints; a checkpoint from before it was kept reads words at the default."""
    from zoo.checkpoint import load_checkpoint, read_checkpoint

    L.seed_everything(0)
    model, dm = small(), CoNLLDataModule(str(conll_dir), max_word_len=5)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    t.fit(model, dm)
    assert model.hparams.max_word_len == 5
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args))  # (words, chars, lengths)
    words = read_columns(conll_dir / "dev.txt")[0][0]  # "<name> <surname> visited <place> ."
    assert max(map(len, words)) > 5
    tagged = model.tag([words])[0]
    expected = collate_tagged([dm.datasets["val"][0]])  # (words, chars, lengths, tags) as the data encodes them
    got_words, got_chars, got_lengths = seen[0]
    assert got_chars.shape[-1] == 5
    assert torch.equal(got_words.cpu(), expected[0]) and torch.equal(got_chars.cpu(), expected[1])
    assert torch.equal(got_lengths, expected[2])
    with torch.no_grad():
        emissions = model.eval()(*expected[:3])
    decoded = model.net.decode(emissions, expected[2])[0].tolist()
    assert tagged["tags"] == [model.hparams.tags[i] for i in decoded[: len(words)]]
    t.save_checkpoint(tmp_path / "cut.ckpt")
    ckpt = read_checkpoint(tmp_path / "cut.ckpt")
    assert ckpt["hyper_parameters"]["max_word_len"] == 5
    assert load_checkpoint(tmp_path / "cut.ckpt").hparams.max_word_len == 5
    del ckpt["hyper_parameters"]["max_word_len"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert load_checkpoint(tmp_path / "old.ckpt").hparams.max_word_len == MAX_WORD_LEN == 30


def test_pretrained_word_vectors_from_a_file(conll_dir, tmp_path):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("2 16\n" + "\n".join(f"{w} " + " ".join(["0.5"] * 16) for w in ("paris", "visited")) + "\n")
    model = small(word_vectors=str(vectors))
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).validate(model, CoNLLDataModule(str(conll_dir)))
    rows = model.net.words.weight[[model.hparams.words.index(w) for w in ("paris", "visited")]]
    assert torch.equal(rows, torch.full((2, 16), 0.5))
    with pytest.raises(FileNotFoundError, match="no word-vector file"):
        trainer(tmp_path).validate(small(word_vectors=str(tmp_path / "none.txt")), CoNLLDataModule(str(conll_dir)))
    vectors.write_text("unrelated " + " ".join(["1"] * 16) + "\n")
    with pytest.raises(ValueError, match="no 16-dimensional vector for any word"):
        trainer(tmp_path).validate(small(word_vectors=str(vectors)), CoNLLDataModule(str(conll_dir)))


@pytest.mark.real_data("conll2003")
def test_span_f1_equals_seqeval_on_the_real_files(real_data_dir):
    """On eng.testa's own IOB1 tags with 10% of them corrupted (as a tagger's errors would be), our span scores equal
    seqeval's (conlleval's rules), overall and per type."""
    seqeval = pytest.importorskip("seqeval.metrics")
    gold = [tags for _, tags in read_columns(real_data_dir / "conll2003" / "eng.testa")]
    names = sorted({t for g in gold for t in g})
    r = random.Random(1)
    pred = [[t if r.random() < 0.9 else r.choice(names) for t in g] for g in gold]
    assert_span_scores_equal_seqeval(seqeval, names, gold, pred)
