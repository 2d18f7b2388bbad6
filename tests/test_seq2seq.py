"""Encoder-decoders: decoding (greedy, batched beam search), masking, the translation DataModule, the Seq2Seq task
and train.py."""

import gzip
import itertools
import math
import random

import lightning as L
import pytest
import torch
from conftest import quiet_trainer as trainer
from conftest import run_train, slow_except

import zoo
from datamodules import DatasetError
from datamodules.translation import TranslationDataModule, word_tokenize
from zoo.nets.decoding import length_penalty
from zoo.nets.seq2seq import Seq2SeqNet
from zoo.tasks.text_codec import detokenize

S2S_MODELS = zoo.list_models(task="seq2seq")
VARIANTS = [  # (cell, attention, input_feeding, bidirectional)
    ("gru", "general", False, True),
    ("lstm", "additive", True, True),
    ("gru", "dot", False, False),
    ("lstm", "none", False, True),
    ("rnn", "general", True, False),
]
LEXICON = {"ein": "a", "hund": "dog", "katze": "cat", "läuft": "runs", "schläft": "sleeps", "mann": "man"}


def tiny_net(cell="gru", attention="general", input_feeding=False, bidirectional=True, vocab=(11, 9), **kw):
    torch.manual_seed(0)
    return Seq2SeqNet(
        src_vocab_size=vocab[0],
        tgt_vocab_size=vocab[1],
        cell=cell,
        embed_dim=8,
        hidden_size=8,
        num_layers=2,
        dropout=0.0,
        attention=attention,
        input_feeding=input_feeding,
        bidirectional=bidirectional,
        **kw,
    ).eval()


def sources(n=5, length=7, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    lengths[0] = length
    src = torch.randint(4, vocab, (n, length), generator=g)
    src[torch.arange(length)[None] >= lengths[:, None]] = 0
    return src, lengths


def toy_rows(n=400, seed=0):
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        ws = [r.choice(list(LEXICON)) for _ in range(r.randint(2, 6))]
        rows.append((" ".join(ws) + " .", " ".join(LEXICON[w] for w in ws) + " ."))
    return rows


@pytest.fixture(scope="module")
def toy_lines(tmp_path_factory):
    path = tmp_path_factory.mktemp("lines") / "lines.txt"
    path.write_text("".join(f"{a}\n" for a, _ in toy_rows(300, seed=1)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_tsv(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "pairs.tsv"
    path.write_text("".join(f"{a}\t{b}\textra column\n" for a, b in toy_rows()), encoding="utf-8")
    return path


def toy_dm(path, **kw):
    return TranslationDataModule(path and str(path), **{"batch_size": 16, "eval_batch_size": 32, "min_freq": 1, **kw})


# -- the net and its decoding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_beam_of_one_is_greedy_and_batching_changes_nothing(variant):
    net, (src, lengths) = tiny_net(*variant), sources()
    greedy = net.greedy(src, lengths)
    beam1 = net.beam_search(src, lengths, beam=1, alpha=0.0)
    assert [g.tokens for g in greedy] == [b[0].tokens for b in beam1]
    assert [g.score for g in greedy] == pytest.approx([b[0].score for b in beam1], abs=1e-5)
    batched = net.beam_search(src, lengths, beam=4, alpha=0.6, nbest=3)
    for i, hyps in enumerate(batched):
        alone = net.beam_search(src[i : i + 1, : lengths[i]], lengths[i : i + 1], beam=4, alpha=0.6, nbest=3)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-5)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_source_padding_is_masked(variant):
    """More padding after the sources changes neither the logits nor any translation; padded positions get no
    attention."""
    net, (src, lengths) = tiny_net(*variant), sources()
    tgt = torch.randint(4, 9, (5, 6))
    padded = torch.cat([src, torch.zeros(5, 4, dtype=torch.long)], 1)
    (a, wa), (b, wb) = net(src, lengths, tgt), net(padded, lengths, tgt)
    torch.testing.assert_close(a, b)
    if wa is not None:
        torch.testing.assert_close(wb[..., : src.shape[1]], wa)
        assert (wb[..., src.shape[1] :] == 0).all() and (wa[1][:, lengths[1] :] == 0).all()
    beams = lambda s: [h[0].tokens for h in net.beam_search(s, lengths, beam=3)]  # noqa: E731
    assert beams(src) == beams(padded)


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_step_by_step_decoding_equals_the_training_pass(variant):
    """The decoder step that searches use gives the logits of the teacher-forced pass over the whole target."""
    net, (src, lengths) = tiny_net(*variant), sources()
    tgt = torch.randint(4, 9, (5, 6))
    full, _ = net(src, lengths, tgt)
    memory, state = net.encode(src, lengths)
    feed, steps = net._feed0(memory), []
    for t in range(tgt.shape[1]):
        logits, state, feed, _ = net._run(tgt[:, t : t + 1], state, feed, memory)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full)


def test_an_exhaustive_beam_finds_the_exact_best_sequence():
    """With a beam wider than every sequence that fits the length limit, beam search is exact: its best equals
    the best of all sequences enumerated and scored by the teacher-forced pass, and its scores are theirs."""
    net = tiny_net(vocab=(11, 6))  # outputs: <unk>, <eos>, 4, 5 (never <pad> or <bos>)
    src, lengths = sources(n=2, length=3)
    limit = 3  # max_len_a=0, max_len_b=3: EOS by the third token
    best = net.beam_search(src, lengths, beam=64, alpha=0.6, max_len_a=0.0, max_len_b=limit, nbest=3)
    for i in range(2):
        scored = []
        for n in range(limit):
            for body in itertools.product([1, 4, 5], repeat=n):
                y = torch.tensor([[2, *body, 3]])
                logits, _ = net(src[i : i + 1, : lengths[i]], lengths[i : i + 1], y[:, :-1])
                lp = logits.float().log_softmax(-1)
                lp[..., [0, 2]] = float("-inf")  # the search never outputs <pad>/<bos>: renormalised without them
                lp = lp.log_softmax(-1)
                if n + 1 == limit:  # at the limit only EOS is allowed (with probability 1)
                    lp[0, -1] = torch.where(torch.arange(6) == 3, 0.0, float("-inf"))
                total = float(lp[0].gather(1, y[0, 1:, None]).sum().detach())
                scored.append((total / float(length_penalty(torch.tensor(n + 1), 0.6)), list(body)))
        scored.sort(key=lambda s: -s[0])
        assert [h.tokens for h in best[i]] == [b for _, b in scored[:3]]
        assert [h.score for h in best[i]] == pytest.approx([s for s, _ in scored[:3]], abs=1e-4)


def test_length_limit_and_hypothesis_fields():
    net, (src, lengths) = tiny_net(), sources()
    for hyps in net.beam_search(src, lengths, beam=3, nbest=3, max_len_a=1.0, max_len_b=2):
        for h in hyps:
            assert h.attention.shape[1] <= src.shape[1] and h.attention.shape[0] == len(h.tokens) + 1
            assert torch.allclose(h.attention.sum(1), torch.ones(h.attention.shape[0]), atol=1e-5)
    for g, n in zip(net.greedy(src, lengths, max_len_a=1.0, max_len_b=2), lengths):
        assert len(g.tokens) + 1 <= int(n) + 2 and g.attention.shape[1] == int(n)
        assert 0 not in g.tokens and 2 not in g.tokens
    with pytest.raises(ValueError, match="nbest <= beam"):
        net.beam_search(src, lengths, beam=2, nbest=3)


def test_teacher_forcing_below_one_feeds_predictions():
    net, (src, lengths) = tiny_net(), sources()
    tgt = torch.randint(4, 9, (5, 6))
    forced, _ = net(src, lengths, tgt, teacher_forcing=1.0)
    own, _ = net(src, lengths, tgt, teacher_forcing=0.0)
    torch.testing.assert_close(forced[:, 0], own[:, 0])  # the first step reads BOS either way
    assert not torch.allclose(forced, own)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="dot attention needs"):
        tiny_net(attention="dot", bidirectional=True)
    with pytest.raises(ValueError, match="tie_embeddings needs embed_dim == hidden_size"):
        Seq2SeqNet(src_vocab_size=9, tgt_vocab_size=9, embed_dim=4, hidden_size=8, tie_embeddings=True)
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny_net(attention="luong")
    tied = Seq2SeqNet(src_vocab_size=9, tgt_vocab_size=9, embed_dim=8, hidden_size=8, tie_embeddings=True)
    assert tied.out.weight is tied.tgt_embedding.weight


# -- data -------------------------------------------------------------------------------------------------------
def test_word_tokens_and_detokenising():
    text = 'A man (in red) says "hello, world!" to the dog\'s owner.'
    tokens = word_tokenize(text)
    assert tokens[:4] == ["A", "man", "(", "in"] and "dog's" in tokens
    assert detokenize(tokens) == text


def test_corpus_formats_and_bad_files(tmp_path, toy_tsv):
    dm = toy_dm(toy_tsv)
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [360, 20, 20]
    src, lengths, tgt, index = next(iter(dm.val_dataloader()))
    assert (tgt[:, 0] == 2).all() and ((tgt == 3).sum(1) == 1).all() and len(src) == len(index) == len(lengths)
    assert dm.references["val"][int(index[0])].endswith(" .")
    again = toy_dm(toy_tsv)
    again.setup("fit")
    assert again.references == dm.references  # the split is deterministic
    (tmp_path / "a.de.gz").write_bytes(gzip.compress(b"ein hund .\nein mann .\n\n"))
    (tmp_path / "a.en").write_text("a dog .\na man .\nempty source\n")
    assert toy_dm(None, source=str(tmp_path / "a.de.gz"), target=str(tmp_path / "a.en")).load_pairs()
    (tmp_path / "b.en").write_text("a dog .\n")
    with pytest.raises(DatasetError, match=r"a.de.gz has 3 lines but .*b.en has 1"):
        toy_dm(None, source=str(tmp_path / "a.de.gz"), target=str(tmp_path / "b.en")).setup("fit")
    (tmp_path / "bad.tsv").write_text("ein hund .\ta dog .\nonly one column\n")
    with pytest.raises(DatasetError, match=r"bad.tsv, line 2: 1 column, no column 1 \(--data.target_column\)"):
        toy_dm(tmp_path / "bad.tsv").setup("fit")
    with pytest.raises(DatasetError, match="no corpus at"):
        toy_dm(tmp_path / "missing").setup("fit")
    (tmp_path / "latin1.tsv").write_bytes("b\xe4r\tbear\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        toy_dm(tmp_path / "latin1.tsv").setup("fit")
    with pytest.raises(ValueError, match="tokenizer must be"):
        toy_dm(toy_tsv, tokenizer="spaces")


def test_empty_sides_and_long_pairs_are_left_out_and_counted(tmp_path, caplog):
    rows = toy_rows(100) + [("", "a dog ."), ("ein hund .", "  ")] + [(" ".join(["hund"] * 80), "dog")]
    (tmp_path / "c.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    dm = toy_dm(tmp_path / "c.tsv", max_len=64)
    with caplog.at_level("INFO"):
        dm.setup("fit")
    long_in_train = any(len(x) == 80 for x, _, _ in dm.datasets["val"] + dm.datasets["test"]) is False
    assert sum(len(d) for d in dm.datasets.values()) == 101 - long_in_train  # only training pairs are cut
    train = len(dm.datasets["train"]) + int(long_in_train)
    assert f"max_len=64 tokens (either side, training split only): left out {int(long_in_train)} of {train}" in (
        caplog.text
    )
    assert "pairs with an empty side" in caplog.text


def test_bpe_round_trips_exactly(toy_tsv):
    dm = toy_dm(toy_tsv, tokenizer="bpe", bpe_vocab_size=60)
    dm.setup("fit")
    from zoo.tasks.text_codec import TextCodec

    codec = TextCodec(dm.tgt_spec)
    for ref in dm.references["test"][:10]:
        assert codec.decode(codec.encode(ref)) == ref
    assert codec.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and len(codec.itos) <= 60


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_word_bleu_counts_words_for_either_tokenizer(toy_tsv, tokenizer):
    """``test_bleu_tok`` compares words: a BPE model's pieces are joined back into them first, so that its
    figure is the one a word model (and a tutorial that tokenises) reports, not BLEU over sub-word pieces."""
    from zoo.tasks.text_codec import TextCodec

    dm = toy_dm(toy_tsv, tokenizer=tokenizer, bpe_vocab_size=40)
    dm.setup("fit")
    codec = TextCodec(dm.tgt_spec)
    for ref in dm.references["test"][:10]:
        assert codec.output_words(codec.encode(ref)) == codec.words(ref) == word_tokenize(ref)
    if tokenizer == "bpe":
        assert any(codec.tokens(r) != word_tokenize(r) for r in dm.references["test"][:10])  # pieces, not words


@pytest.mark.real_data("multi30k")
def test_multi30k(real_data_dir):
    dm = TranslationDataModule(data_dir=str(real_data_dir))
    dm.setup("fit")
    assert [len(dm.references[s]) for s in ("train", "val", "test")] == [29000, 1014, 1000]
    assert dm.references["test"][0] == "A man in an orange hat starring at something."
    assert len(dm.datasets["train"]) > 28900  # a few over max_len=64 are left out
    reverse = TranslationDataModule(data_dir=str(real_data_dir), src_lang="en", tgt_lang="de")
    reverse.setup("fit")
    assert reverse.references["test"][0].startswith("Ein Mann mit einem orangefarbenen Hut")


@pytest.mark.real_data("multi30k")
def test_bleu_is_sacrebleu(real_data_dir):
    """The task's BLEU (torchmetrics' SacreBLEUScore) equals sacrebleu's corpus_bleu on real references."""
    sacrebleu = pytest.importorskip("sacrebleu")
    from torchmetrics.text import SacreBLEUScore

    refs = TranslationDataModule(data_dir=str(real_data_dir)).load_pairs()["test"]
    refs = [b for _, b in refs]
    r = random.Random(0)
    hyps = [" ".join(w for w in ref.split() if r.random() > 0.2) for ref in refs]
    ours = float(SacreBLEUScore(tokenize="13a")(hyps, [[x] for x in refs])) * 100
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-3)


# -- the task ---------------------------------------------------------------------------------------------------
def test_training_learns_a_toy_language_and_translates_raw_strings(toy_tsv, tmp_path):
    L.seed_everything(0)
    model = zoo.create_model("seq2seq_gru_attn", embed_dim=32, hidden_size=32, dropout=0.0, lr=1e-2, beam=3)
    t = trainer(tmp_path, max_epochs=8)
    t.fit(model, toy_dm(toy_tsv))
    assert t.callback_metrics["val_bleu"] > 50
    (res,) = t.test(model, toy_dm(toy_tsv), verbose=False)
    assert res["test_bleu"] > 60 and res["test_ppl_tf"] == pytest.approx(math.exp(res["test_loss"]), rel=1e-4)
    assert model.translate("ein hund läuft .") == "a dog runs."
    out = model.translate(["ein mann schläft .", "ein unbekanntes wort ."], return_attention=True)
    assert out[0]["source_tokens"] == ["ein", "mann", "schläft", "."] and out[0]["translation"] == "a man sleeps."
    assert out[0]["attention"].shape == (len(out[0]["target_tokens"]), 4)
    nbest = model.translate("ein katze .", beam=3, nbest=3)
    assert len(nbest) == 3 and nbest[0][1] >= nbest[1][1] >= nbest[2][1]
    with pytest.raises(ValueError, match="more than max_source_len=256"):
        model.translate(" ".join(["hund"] * 300))
    with pytest.raises(ValueError, match="differ from the model"):
        trainer(tmp_path).validate(model, toy_dm(toy_tsv, lowercase=True, tokenizer="bpe", bpe_vocab_size=50))


@pytest.mark.slow
def test_autoencoder_rebuilds_its_input_from_one_vector(toy_lines, toy_tsv, tmp_path):
    L.seed_everything(0)
    model = zoo.create_model("seq_autoencoder", embed_dim=32, hidden_size=32, dropout=0.0, lr=1e-2)
    t = trainer(tmp_path, max_epochs=10)
    t.fit(model, TranslationDataModule(source=str(toy_lines), min_freq=1, batch_size=16))
    assert t.callback_metrics["val_bleu"] > 40
    codes = model.encode(["ein hund .", "ein mann schläft ."])
    assert codes.shape == (2, 64) and not torch.allclose(codes[0], codes[1])
    with pytest.raises(ValueError, match="reads and writes the same text"):
        trainer(tmp_path).fit(zoo.create_model("seq_autoencoder", hidden_size=8, embed_dim=8), toy_dm(toy_tsv))


def train_py(name: str, data: list[str], tmp_path):
    args = ["fit", "--model", name, "--data", "translation", *data, "--model.hidden_size", "16"]
    res = run_train([*args, "--model.embed_dim", "16", "--trainer.fast_dev_run", "2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run folder: runs/{name}-translation/version_0" in res.stdout


@pytest.mark.parametrize("name", slow_except(S2S_MODELS, {"seq2seq_gru_attn"}, str))
def test_train_py_seq2seq_models(name, toy_tsv, toy_lines, tmp_path):
    data = ["--data.source", str(toy_lines)] if name == "seq_autoencoder" else ["--data.path", str(toy_tsv)]
    train_py(name, [*data, "--data.min_freq", "1"], tmp_path)


@pytest.mark.parametrize("name", slow_except(S2S_MODELS, {"seq2seq_gru_attn"}, str))
@pytest.mark.real_data("multi30k")
def test_train_py_on_multi30k(name, real_data_dir, tmp_path):
    langs = ["--data.src_lang", "en"] if name == "seq_autoencoder" else []  # English in, English out
    train_py(name, ["--data.data_dir", str(real_data_dir), *langs], tmp_path)


@pytest.mark.slow
def test_published_translator_works_alone(toy_tsv, tmp_path, monkeypatch):
    """Weights published from a checkpoint translate raw strings with nothing else: the vocabularies travel in a
    sha256-checked file beside the weights."""
    from zoo.cli.readme import weights_table
    from zoo.weights.publish import publish

    L.seed_everything(0)
    model = zoo.create_model("seq2seq_gru_attn", embed_dim=32, hidden_size=32, dropout=0.0, lr=1e-2, beam=3)
    t = trainer(tmp_path, max_epochs=6)
    t.fit(model, toy_dm(toy_tsv))
    t.save_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "ckpts"))
    monkeypatch.setattr("zoo.weights.publish.LARGE_KWARG", 100)  # the toy vocabularies are small
    entry = publish(tmp_path / "last.ckpt", "toy", "configs/seq2seq_gru_attn.multi30k_de_en.yaml")
    assert {"test_bleu", "test_bleu_greedy", "test_bleu_tok", "val_bleu"} <= set(entry.metrics)
    assert entry.kwargs_file["keys"] == ["src_spec", "tgt_spec"] and "src_spec" not in entry.kwargs
    assert f"| `seq2seq_gru_attn.toy` | BLEU {entry.metrics['test_bleu']:.1f} (greedy " in weights_table()
    loaded = zoo.load_pretrained("seq2seq_gru_attn.toy")
    sentences = ["ein hund läuft .", "ein mann schläft ."]
    assert loaded.translate(sentences) == model.eval().translate(sentences) or entry.dtype == "float16"
    side = tmp_path / "ckpts" / entry.kwargs_file["file"]
    side.write_text(side.read_text().replace("hund", "hunt"))
    with pytest.raises(zoo.PretrainedError, match="sha256"):
        zoo.load_pretrained("seq2seq_gru_attn.toy")


@pytest.mark.slow
def test_bf16_autocast_and_ddp(toy_tsv, tmp_path):
    """bf16-mixed trains (the recurrences stay fp32 on the CPU); two DDP processes train and validate."""
    L.seed_everything(0)
    model = zoo.create_model("seq2seq_lstm_attn", embed_dim=16, hidden_size=16, input_feeding=True)
    t = trainer(tmp_path, limit_train_batches=3, precision="bf16-mixed", limit_val_batches=1)
    t.fit(model, toy_dm(toy_tsv))
    assert math.isfinite(float(t.callback_metrics["val_loss"]))
    ddp = {"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 2}
    t = trainer(tmp_path, limit_train_batches=3, limit_val_batches=1, **ddp)
    t.fit(zoo.create_model("seq2seq_gru_attn", embed_dim=16, hidden_size=16), toy_dm(toy_tsv))
    assert "val_bleu" in t.callback_metrics


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=["-".join(map(str, v)) for v in VARIANTS[:3]])
def test_returned_attention_is_the_one_that_produced_each_token(variant):
    """The attention rows of a beam hypothesis (its parents' at each step) equal the teacher-forced pass over
    its tokens."""
    net, (src, lengths) = tiny_net(*variant), sources()
    for i, hyps in enumerate(net.beam_search(src, lengths, beam=4, nbest=4)):
        for h in hyps:
            y = torch.tensor([[2, *h.tokens]])
            _, w = net(src[i : i + 1, : lengths[i]], lengths[i : i + 1], y)
            torch.testing.assert_close(h.attention, w[0], atol=1e-5, rtol=1e-4)
