"""The architecture holds: no import circle between the zoo's modules, published weights looked up once per load,
every registered builder says what it is, and each task knows its own headline metric."""

import json
import pathlib

import grimp
import pytest

import zoo
from zoo.tasks import ImageClassifier, LanguageModel, Seq2Seq, SequenceClassifier, Tagger
from zoo.weights import manifest, store


def test_the_import_graph_has_no_circle():
    graph = grimp.build_graph("zoo", "datamodules")
    circles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                circles.append(" -> ".join((module, *back)))
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.fixture
def counted(monkeypatch):
    """Counts reads of manifest.json and sha256 computations per file, from a cold manifest cache."""
    counts = {"manifest reads": 0, "sha256": {}}
    read_text = pathlib.Path.read_text

    def counting_read_text(self, *args, **kwargs):
        if self.name == manifest.MANIFEST:
            counts["manifest reads"] += 1
        return read_text(self, *args, **kwargs)

    sha256_of = store.sha256_of

    def counting_sha256_of(path):
        counts["sha256"][path.name] = counts["sha256"].get(path.name, 0) + 1
        return sha256_of(path)

    monkeypatch.setattr(pathlib.Path, "read_text", counting_read_text)
    monkeypatch.setattr(store, "sha256_of", counting_sha256_of)
    monkeypatch.setattr(manifest, "_cache", {})
    return counts


def test_load_pretrained_reads_the_manifest_once_and_hashes_each_file_once(counted):
    name = "bilstm_crf.conll2003"  # weights and a kwargs side file (vocabularies)
    entry = zoo.list_pretrained(name) and manifest.read_manifest()[name]
    counted["manifest reads"] = 0  # the lookup above filled the cache: count from a cold one
    manifest._cache.clear()
    model = zoo.load_pretrained(name)
    assert counted["manifest reads"] == 1
    assert counted["sha256"] == {entry.file: 1, entry.kwargs_file["file"]: 1}
    assert model.hparams.pretrained == name and model.weights.path is not None
    zoo.load_pretrained(name)  # a second load verifies the files again, and reads no manifest
    assert counted["manifest reads"] == 1 and counted["sha256"] == {entry.file: 2, entry.kwargs_file["file"]: 2}


def test_weights_resolved_once_are_passed_down(counted):
    weights = zoo.get_weights("resnet20.cifar10")
    assert weights.path is not None and counted["sha256"] == {weights.file: 1}
    model = zoo.create_model("resnet20", pretrained=weights)
    model2 = zoo.load_pretrained(weights)
    assert counted["sha256"] == {weights.file: 1}  # neither looked the file up again
    assert model.hparams.pretrained == model2.hparams.pretrained == "resnet20.cifar10"  # a name, as checkpoints keep


def test_the_manifest_is_read_again_only_when_it_changes(tmp_path, monkeypatch, counted):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    raw = json.loads((store.REPOSITORY / manifest.MANIFEST).read_text())
    (folder / manifest.MANIFEST).write_text(json.dumps({"lenet5.cifar10": raw["lenet5.cifar10"]}))
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))
    counted["manifest reads"] = 0
    assert zoo.list_pretrained() == ["lenet5.cifar10"] and zoo.list_pretrained("lenet*") == ["lenet5.cifar10"]
    assert counted["manifest reads"] == 1
    (folder / manifest.MANIFEST).write_text(json.dumps({"lenet5.other": raw["lenet5.cifar10"]}, indent=1))
    assert zoo.list_pretrained() == ["lenet5.other"] and counted["manifest reads"] == 2


def test_a_manifest_entry_round_trips_through_weights(tmp_path):
    entries = manifest.read_manifest(store.REPOSITORY)
    raw = json.loads((store.REPOSITORY / manifest.MANIFEST).read_text())
    for name, w in entries.items():  # every key of the file is kept, none renamed or dropped
        assert {k: v for k, v in w.to_json().items() if k in raw[name]} == raw[name]
    manifest.write_manifest(entries, tmp_path)
    assert manifest.read_manifest(tmp_path) == entries


@pytest.mark.parametrize("name", zoo.list_models(), ids=str)
def test_every_builder_says_what_it_is(name):
    entry = zoo.model_info(name)
    assert entry.builder.__doc__ and entry.summary != name and len(entry.summary) > 20


def test_a_task_refuses_a_model_it_does_not_train_naming_those_it_does():
    with pytest.raises(ValueError, match="'lstm_lm' is a language_model model, trained by LanguageModel, not Image"):
        ImageClassifier(arch="lstm_lm")
    with pytest.raises(ValueError, match="SequenceClassifier trains gru_classifier, lstm_classifier, rnn_classifier"):
        SequenceClassifier(arch="resnet20")


@pytest.mark.parametrize(
    ("task", "metrics", "shown", "headline"),
    [
        (ImageClassifier, {"test_acc": 0.91374}, "91.37%", ("test_acc", 100.0)),
        (SequenceClassifier, {"test_acc": 0.8119, "test_f1": 0.4977}, "81.19%, F1 0.498", ("test_acc", 100.0)),
        (LanguageModel, {"test_loss": 1.65934}, "1.659 nats/token", ("test_loss", 100.0)),
        (Seq2Seq, {"test_bleu": 32.25, "test_bleu_greedy": 30.2}, "BLEU 32.2 (greedy 30.2)", ("test_bleu", 1.0)),
        (Tagger, {"test_score": 0.8641, "test_f1": 0.8641, "test_acc": 0.97}, "span F1 86.41", ("test_score", 100.0)),
        (Tagger, {"test_score": 0.9492, "test_acc": 0.9492}, "94.92% token accuracy", ("test_score", 100.0)),
    ],
    ids=["image", "sequence", "lm", "seq2seq", "ner", "pos"],
)
def test_each_task_knows_its_headline_metric(task, metrics, shown, headline):
    assert task.describe(metrics, "test") == shown
    assert task.headline_metric() == headline
