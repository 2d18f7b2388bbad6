"""Text building blocks and the text-classification DataModules."""

import pytest
import torch
from conftest import NAMES
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from datamodules import DatasetError
from datamodules.names import NamesDataModule
from datamodules.text import BucketBatchSampler, Vocab, pad_collate, tokenizer
from datamodules.text_classification import TextClassificationDataModule, stratified_split


def test_vocab_order_limits_and_unknown_tokens(tmp_path):
    v = Vocab.build([list("abracadabra"), list("cab")], min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "a", "b", "c", "r"]  # by frequency, ties alphabetical; 'd' seen once
    assert v.encode(list("abz")) == [2, 3, 1] and v.decode([2, 5]) == ["a", "r"]
    assert len(Vocab.build([list("abracadabra")], max_size=4)) == 4
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == v.itos
    strict = Vocab(["x"], specials=())
    with pytest.raises(KeyError, match="not in the vocabulary"):
        strict.encode(["y"])
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        tokenizer("bpe")


def test_pad_collate_pads_and_reports_lengths():
    x, lengths, y = pad_collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)])
    assert x.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1] and y.tolist() == [1, 0]


LENGTHS = [int(n) for n in torch.randint(1, 40, (1000,), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("drop_last", [False, True])
def test_bucket_sampler_covers_every_index_once_in_homogeneous_batches(drop_last):
    s = BucketBatchSampler(RandomSampler(range(1000)), 32, drop_last, lengths=LENGTHS, pool_factor=10)
    batches = list(s)
    assert len(batches) == len(s) == (1000 // 32 if drop_last else -(-1000 // 32))
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and (len(flat) == 1000 or drop_last)
    padded = sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)
    assert padded < 1.15 * sum(LENGTHS[i] for i in flat)  # random batches of 32 would pad ~90% more
    assert [b for b in s] != batches  # a new epoch, a new order


def test_bucket_sampler_under_ddp_gives_each_rank_a_disjoint_shard_of_equal_length():
    per_rank = []
    for rank in range(2):
        inner = DistributedSampler(range(1000), num_replicas=2, rank=rank, shuffle=True, seed=0)
        per_rank.append(list(BucketBatchSampler(inner, 32, False, lengths=LENGTHS)))
    assert len(per_rank[0]) == len(per_rank[1])  # DDP hangs otherwise
    a, b = ({i for batch in r for i in batch} for r in per_rank)
    assert not a & b and len(a | b) == 1000
    seq = list(BucketBatchSampler(SequentialSampler(range(100)), 10, False, lengths=LENGTHS[:100], shuffle=False))
    assert seq == list(BucketBatchSampler(SequentialSampler(range(100)), 10, False, LENGTHS[:100], shuffle=False))


def test_stratified_split_is_seeded_disjoint_and_keeps_every_class():
    examples = [(f"{c}{i}", c) for c in "ab" for i in range(20)] + [("lonely", "c")]
    s1, s2 = stratified_split(examples, 0.1, 0.2, seed=3), stratified_split(examples[::-1], 0.1, 0.2, seed=3)
    assert s1 == s2  # independent of input order
    assert sum(len(v) for v in s1.values()) == len(examples)
    assert {lab for _, lab in s1["train"]} == {"a", "b", "c"}
    assert len([e for e in s1["val"] if e[1] == "a"]) == 2 and len([e for e in s1["test"] if e[1] == "a"]) == 4


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_datamodule_reads_splits_and_builds_vocab_on_train(tmp_path):
    rows = [f"good movie {i},pos" for i in range(10)] + [f"bad film {i},neg" for i in range(10)]
    dm = TextClassificationDataModule(str(write_csv(tmp_path / "t.csv", rows)), batch_size=4)
    dm.setup("fit")
    assert dm.classes == ["neg", "pos"] and "movie" in dm.vocab and sum(len(d) for d in dm.datasets.values()) == 20
    x, lengths, y = next(iter(dm.train_dataloader()))
    assert x.shape[0] == 4 and lengths.max() == x.shape[1]
    folder = tmp_path / "splits"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text("label\ttext\textra\npos\tfine\tx\nneg\tawful\ty\n", encoding="utf-8")
    dm = TextClassificationDataModule(str(folder), tokenizer="char")
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 2 and "f" in dm.vocab


@pytest.mark.parametrize(
    "content, message",
    [
        ("words,label\nhi,a\n", "no column 'text'"),
        ("text,label\nhi,a\nho,\n", "line 3: empty or missing"),
        ("text,label\n", "holds no rows"),
    ],
)
def test_csv_bad_input_is_named(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        TextClassificationDataModule(str(tmp_path / "bad.csv")).setup("fit")


def test_csv_not_utf8_missing_file_and_unseen_labels(tmp_path):
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        TextClassificationDataModule(str(tmp_path / "latin.csv")).setup("fit")
    with pytest.raises(DatasetError, match="no file or folder"):
        TextClassificationDataModule(str(tmp_path / "nope.csv")).setup("fit")
    folder = tmp_path / "splits"
    folder.mkdir()
    write_csv(folder / "train.csv", ["a,x"])
    write_csv(folder / "val.csv", ["b,x"])
    write_csv(folder / "test.csv", ["c,y"])
    with pytest.raises(DatasetError, match=r"labels \['y'\] appear in val/test but not in train"):
        TextClassificationDataModule(str(folder)).setup("fit")


def test_names_datamodule_on_the_real_layout(names_dir):
    dm = NamesDataModule(str(names_dir), val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.classes == sorted(NAMES)
    total = sum(len(set(v)) for v in NAMES.values())  # the repeated "Abe" is kept once
    assert sum(len(d) for d in dm.datasets.values()) == total
    assert dm.class_weights[dm.classes.index("Scottish")] > dm.class_weights[dm.classes.index("Russian")]
    assert "<unk>" in dm.vocab and dm.encode("Ab\u00e9").tolist()[-1] == dm.vocab.unk_id  # unseen char -> <unk>


def test_names_missing_folder_says_where(tmp_path):
    with pytest.raises(DatasetError, match=r"no <Language>.txt files in .*names.*data.zip"):
        NamesDataModule(str(tmp_path / "empty")).setup("fit")


@pytest.mark.real_data("names")
def test_names_real_data(real_data_dir):
    dm = NamesDataModule(str(real_data_dir))
    dm.setup("fit")
    assert len(dm.classes) == 18 and sum(len(d) for d in dm.datasets.values()) == 18015  # 20,074 less repeats
