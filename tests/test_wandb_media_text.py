"""The text families' W&B pictures, read back from offline runs (``run-*.wandb`` records and the media files under
``files/media``): language-model samples (fixed prompts and seeds: the same in two runs, and training unchanged by
them), translations with attention heatmaps, the tagger's per-type scores (equal to its own validation F1) and
sentences, the recurrent classifier's gradient curve (one line per measured step, its scalars logged at those steps
only); ``--wandb.media false`` logs none of it."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import pairs_tsv, quiet_trainer, tagged_files
from PIL import Image
from wandb_records import WandbRun, finished_run

import zoo
from zoo.callbacks import HiddenStateGradients
from zoo.callbacks.media import media_callbacks
from zoo.callbacks.media.language_model import TEMPERATURES
from zoo.callbacks.media.sequence import GradientCurve, spread
from zoo.callbacks.media.tagging import marked, render
from zoo.callbacks.media.translation import HEATMAPS
from zoo.cli.train import main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def train(tmp_path, monkeypatch):
    """``train(args, name)``: train.py run in this process (its imports paid once, not per run, as in
    test_train_models) with W&B offline, in ``runs/<name>``; returns the run read back."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr("sys.argv", ["train.py"])

    def run(args: list[str], name: str) -> WandbRun:
        monkeypatch.setenv("ZOO_RUN_DIR", "")  # main() sets it (for DDP children) to the run it made
        assert main([*args, *QUIET, "--run_name", name, "--run_root", str(tmp_path / "runs")]) == 0
        (folder,) = (tmp_path / "runs" / name / "version_0" / "wandb").glob("offline-run-*")
        return finished_run(folder)

    return run


def tables(run: WandbRun, key: str) -> list[dict]:
    """Every logged ``wandb.Table`` of ``key`` (``columns``, ``data``), read from the run's media files."""
    return [json.loads((run.folder / "files" / m["path"]).read_text()) for m in run.media(key)]


def media_keys(run: WandbRun) -> set[str]:
    return {k.split("/")[1] for row in run.history for k in row if k.startswith("media/")}


def weights(run: WandbRun) -> dict:
    ckpt = run.folder.parents[1] / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]


# -- language models --------------------------------------------------------------------------------------------
def test_language_model_samples_repeat_with_the_seed_and_leave_training_alone(text_path, train):
    args = ["fit", "--model", "lstm_lm", "--data", "charlm", "--data.path", str(text_path), "--data.batch_size", "4"]
    args += ["--model.hidden_size", "32", "--model.embed_dim", "16", "--model.num_layers", "1"]
    args += ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--wandb.media_samples", "2"]
    first, second = train(args, "a"), train(args, "b")
    logged = tables(first, "media/samples")
    assert len(logged) == 2, "one table per epoch"
    corpus = text_path.read_text()
    for epoch, table in enumerate(logged):
        assert table["columns"] == ["epoch", "prompt", "temperature", "sample"]
        assert len(table["data"]) == 2 * len(TEMPERATURES), "--wandb.media_samples 2 prompts x the temperatures"
        assert {r[0] for r in table["data"]} == {epoch}
        assert [r[2] for r in table["data"]] == list(TEMPERATURES) * 2
        assert len({r[1] for r in table["data"]}) == 2, "from two validation streams"
        assert all(r[1] in corpus and len(r[1]) >= 8 for r in table["data"]), "prompts come from the data"
        assert all(len(r[3]) >= 160 for r in table["data"]), "160 characters sampled after each prompt"
    assert [r[1] for r in logged[0]["data"]] == [r[1] for r in logged[1]["data"]], "the same prompts every epoch"
    assert logged == tables(second, "media/samples"), "same seed, same samples"

    off = train([*args, "--wandb.media", "false"], "off")
    assert not media_keys(off) and not (off.folder / "files" / "media").exists()
    assert off.curve("val_loss") == first.curve("val_loss")
    for (k, a), b in zip(weights(first).items(), weights(off).values()):
        assert torch.equal(a, b), f"{k}: the media changed training"


# -- translation ------------------------------------------------------------------------------------------------
def test_translations_table_and_attention_heatmaps(tmp_path, train):
    args = ["fit", "--model", "seq2seq_gru_attn", "--data", "translation", "--data.path", str(pairs_tsv(tmp_path))]
    args += ["--data.min_freq", "1", "--data.val_fraction", "0.2", "--model.hidden_size", "16"]
    args += ["--model.embed_dim", "16", "--model.beam", "2", "--trainer.max_epochs", "1"]
    run = train([*args, "--wandb.media_samples", "4"], "s2s")
    (table,) = tables(run, "media/translations")
    assert table["columns"] == ["source", "reference", "greedy", "beam"]
    assert len(table["data"]) == 4, "--wandb.media_samples bounds the table"
    assert all(src.startswith("ein hund") and ref.startswith("a dog") for src, ref, *_ in table["data"])
    assert not [k for row in run.history for k in row if "translations" in k and not k.startswith("media/")]
    (heatmaps,) = run.media("media/attention")
    assert heatmaps["count"] == HEATMAPS and len(heatmaps["captions"]) == HEATMAPS
    for name in heatmaps["filenames"]:
        with Image.open(run.folder / "files" / name) as image:
            assert image.size == (heatmaps["width"], heatmaps["height"])
            assert 200 <= image.width <= 1400 and 200 <= image.height <= 1400
            assert len(image.getcolors(1 << 16) or []) > 20, "a drawn figure, not a blank image"


# -- taggers ----------------------------------------------------------------------------------------------------
def test_tagger_scores_per_type_as_its_validation_f1_and_marks_errors(tmp_path, train):
    args = ["fit", "--model", "bilstm_crf", "--data", "conll", "--data.path", str(tagged_files(tmp_path, "conll"))]
    run = train([*args, "--trainer.max_epochs", "2"], "ner")
    charts = tables(run, "media/f1_per_type_table")
    val_rows = [row for row in run.history if "val_f1" in row]
    assert len(charts) == len(val_rows) == 2
    for chart, row in zip(charts, val_rows):  # the media are drawn just before the task logs its epoch metrics
        assert chart["columns"] == ["type", "f1"] and [t for t, _ in chart["data"]] == ["MISC", "ORG"]
        assert {t: pytest.approx(row[f"val_f1_{t}"], abs=1e-6) for t in ("MISC", "ORG")} == dict(chart["data"])
    for table in tables(run, "media/sentences"):
        assert table["columns"] == ["sentence", "gold", "predicted", "errors", "marked"]
        assert len(table["data"]) == 2, "the validation split's two sentences"
        for sentence, gold, predicted, errors, marks in table["data"]:
            assert sentence == "EU rejects German ." and gold == "[EU]ORG rejects [German]MISC ."
            assert errors == marks.count("→") and (errors == 0) == (predicted == gold)
    (html, *_) = run.media("media/sentences_html")
    assert "German" in (run.folder / "files" / html["path"]).read_text()


def test_pos_tags_are_scored_per_tag(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    from datamodules.conll import CoNLLUDataModule

    L.seed_everything(0)
    model = zoo.create_model("bilstm_crf", hidden_size=16, word_dim=16)
    logger = WandbLogger(save_dir=str(tmp_path), project="t")
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=media_callbacks(model), log_every_n_steps=1)
    trainer.fit(model, CoNLLUDataModule(path=str(tagged_files(tmp_path, "conllu"))))
    accuracy = float(trainer.callback_metrics["val_acc"])
    logger.experiment.finish()
    (run,) = [finished_run(p) for p in (tmp_path / "wandb").glob("offline-run-*")]
    (chart,) = tables(run, "media/accuracy_per_tag_table")
    assert sorted(t for t, _ in chart["data"]) == ["ADJ", "PROPN", "PUNCT", "VERB"]
    # every tag occurs once per sentence: the mean of the per-tag accuracies is the token accuracy
    assert sum(a for _, a in chart["data"]) / 4 == pytest.approx(accuracy, abs=1e-6)
    (table,) = tables(run, "media/sentences")
    assert table["data"][0][1] == "EU/PROPN rejects/VERB German/ADJ ./PUNCT"


def test_rendering_of_spans_and_errors():
    words, gold = ["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]
    assert render(words, gold, chunked=True) == "[EU]ORG rejects [German]MISC call"
    assert render(words, ["B-ORG", "I-ORG", "O", "O"], chunked=True) == "[EU rejects]ORG German call"
    assert marked(words, gold, ["B-ORG", "O", "O", "O"]) == "EU rejects German{B-MISC→O} call"


# -- recurrent classifiers ------------------------------------------------------------------------------------------
def test_gradient_curve_draws_one_line_per_measured_step(names_dir, train):
    args = ["fit", "--model", "rnn_classifier", "--data", "names", "--data.data_dir", str(names_dir)]
    args += ["--data.batch_size", "4", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]
    args += ["--trainer.callbacks+=HiddenStateGradients", "--trainer.callbacks.every_n_steps", "2"]
    run = train(args, "rnn")
    measured = [row["trainer/global_step"] for row in run.history if "hgrad_ratio" in row]
    losses = [row["trainer/global_step"] for row in run.history if "train_loss" in row]
    assert measured == list(range(2, 2 * len(measured) + 1, 2)) and len(measured) >= 4, "each measured step once"
    assert len(losses) > len(measured), "Lightning logged at other steps, where the scalars were not repeated"
    drawn = tables(run, "media/hidden_grad_norms")
    images = run.media("media/hidden_grad_curve")
    logged_at = [row["trainer/global_step"] for row in run.history if "media/hidden_grad_curve/path" in row]
    assert len(drawn) == len(images) == len(logged_at) == 2
    for table, image, step in zip(drawn, images, logged_at):
        assert table["columns"] == ["step", "t", "grad_norm"]
        # the media sit where Lightning logs the epoch's val_*: one before the count of optimizer steps taken
        assert sorted({s for s, _, _ in table["data"]}) == [s for s in measured if s <= step + 1], "a line per step"
        assert all(v > 0 for *_, v in table["data"])
        assert (image["width"], image["height"]) == (700, 400)
        assert (run.folder / "files" / image["path"]).stat().st_size > 5000


def test_gradient_curve_measures_itself_without_the_watcher(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    from datamodules.synthetic import AddingDataModule

    model = zoo.create_model("rnn_classifier", hidden_size=8)
    curve = GradientCurve(samples=8)
    logger = WandbLogger(save_dir=str(tmp_path), project="t")
    trainer = quiet_trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[curve], limit_train_batches=2)
    trainer.fit(model, AddingDataModule(length=12, train_size=32, eval_size=16, batch_size=16))
    logger.experiment.finish()
    assert [s for s, _ in curve.history] == [2, 4, 6] and all(len(n) == 12 for _, n in curve.history)
    (run,) = [finished_run(p) for p in (tmp_path / "wandb").glob("offline-run-*")]
    assert [len({s for s, *_ in t["data"]}) for t in tables(run, "media/hidden_grad_norms")] == [1, 2, 3]


def test_spread_keeps_the_first_and_the_newest():
    history = [(s, [1.0]) for s in range(1, 21)]
    assert [s for s, _ in spread(history, 5)] == [1, 6, 11, 15, 20]
    assert [s for s, _ in spread(history, 1)] == [20] and len(spread(history[:3], 8)) == 3


def test_the_watcher_logs_its_scalars_at_its_own_steps_only(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from datamodules.synthetic import AddingDataModule

    watcher = HiddenStateGradients(every_n_steps=3)
    logger = CSVLogger(tmp_path)
    trainer = quiet_trainer(tmp_path, max_steps=7, logger=logger, callbacks=[watcher], log_every_n_steps=1)
    trainer.fit(
        zoo.create_model("rnn_classifier", hidden_size=8),
        AddingDataModule(length=6, train_size=64, eval_size=16, batch_size=8),
    )
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:] if r.split(",")[header.index("hgrad_ratio")]]
    assert steps == [3, 6] and [s for s, _ in watcher.history] == [3, 6]
    assert "hgrad_ratio" in trainer.callback_metrics, "still readable by other callbacks"
