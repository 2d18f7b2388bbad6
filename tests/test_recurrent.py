import os
import subprocess
import sys

import pytest
import torch

from zoo.nets.dropout import LockedDropout
from zoo.nets.recurrent import CELLS, RecurrentEncoder

VARIANTS = [(cell, bi, res) for cell in CELLS for bi in (False, True) for res in (False, True)]
IDS = [f"{c}-{'bi' if b else 'uni'}-{'res' if r else 'plain'}" for c, b, r in VARIANTS]


def encoder(cell, bidirectional=False, residual=False, **kw):
    torch.manual_seed(0)
    kw = {"vocab_size": 11, "embed_dim": 6, **kw}
    return RecurrentEncoder(
        cell=cell, hidden_size=5, num_layers=2, bidirectional=bidirectional, residual=residual, **kw
    ).eval()


@pytest.mark.parametrize("cell, bi, res", VARIANTS, ids=IDS)
def test_shapes_and_state_layout_match_torch(cell, bi, res):
    enc = encoder(cell, bi, res)
    out, state = enc(torch.randint(1, 11, (3, 7)))
    d = 2 if bi else 1
    assert out.shape == (3, 7, 5 * d) and enc.output_size == 5 * d
    h = state[0] if cell == "lstm" else state
    assert h.shape == (2 * d, 3, 5)  # nn.LSTM's (L*D, B, H)
    out2, _ = enc(torch.randint(1, 11, (3, 7)), state=state)  # a carried state is accepted back
    assert out2.shape == out.shape


@pytest.mark.parametrize("cell, bi, res", VARIANTS, ids=IDS)
def test_padded_batch_equals_each_sequence_alone(cell, bi, res):
    enc = encoder(cell, bi, res)
    lengths = torch.tensor([7, 3, 5])
    x = torch.randint(1, 11, (3, 7))
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    out, state = enc(x, lengths)
    h = state[0] if cell == "lstm" else state
    for i, n in enumerate(lengths.tolist()):
        alone, s = enc(x[i : i + 1, :n])
        torch.testing.assert_close(out[i, :n], alone[0], atol=1e-6, rtol=1e-5)
        assert out[i, n:].abs().max() == 0 if n < 7 else True
        torch.testing.assert_close(h[:, i], (s[0] if cell == "lstm" else s)[:, 0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell, bi, res", VARIANTS, ids=IDS)
def test_unrolled_python_loop_equals_fused_kernels(cell, bi, res):
    enc = encoder(cell, bi, res)
    x = torch.randint(1, 11, (2, 6))
    fused, _ = enc(x)
    unrolled, hs = enc.unrolled_states(x)
    torch.testing.assert_close(unrolled, fused, atol=1e-5, rtol=1e-4)
    assert len(hs) == 6 and hs[-1].shape == (2, 5)


def test_time_first_layout_and_float_features():
    enc = RecurrentEncoder(cell="gru", input_size=4, hidden_size=3, batch_first=False)
    out, h = enc(torch.randn(9, 2, 4))  # (T, B, F)
    assert out.shape == (9, 2, 3) and h.shape == (1, 2, 3)
    onehot = RecurrentEncoder(cell="rnn", vocab_size=5, one_hot=True, hidden_size=3)
    assert onehot(torch.tensor([[1, 4, 2]]))[0].shape == (1, 3, 3) and onehot.embedding is None


def test_initialisation_follows_the_literature():
    lstm = RecurrentEncoder(cell="lstm", vocab_size=5, hidden_size=4, forget_bias=1.0)
    layer = lstm.layers[0]
    assert torch.equal((layer.bias_ih_l0 + layer.bias_hh_l0)[4:8], torch.ones(4))  # forget gate
    assert torch.equal((layer.bias_ih_l0 + layer.bias_hh_l0)[:4], torch.zeros(4))
    for g in range(4):
        w = layer.weight_hh_l0[g * 4 : (g + 1) * 4]
        torch.testing.assert_close(w @ w.T, torch.eye(4), atol=1e-5, rtol=0)  # orthogonal per gate
    irnn = RecurrentEncoder(cell="rnn", nonlinearity="relu", recurrent_init="identity", vocab_size=5, hidden_size=4)
    assert torch.equal(irnn.layers[0].weight_hh_l0, torch.eye(4))
    assert irnn.layers[0].weight_ih_l0.abs().max() < 0.01


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_masks_recurrent_weights_once_per_batch(cell):
    """DropConnect: the hidden-to-hidden weights of each layer lose about p of their entries for the whole batch
    (their gradient is exactly zero there), the parameters stay whole, and evaluation uses them all."""
    plain, dropped = encoder(cell), encoder(cell, weight_drop=0.5)
    tokens = torch.randint(1, 11, (3, 7))
    torch.testing.assert_close(dropped(tokens)[0], plain(tokens)[0])  # eval: no drop
    dropped.train()
    before = {k: v.clone() for k, v in dropped.state_dict().items()}
    out, _ = dropped(tokens)
    assert not torch.allclose(out, plain(tokens)[0])
    out.sum().backward()
    for k, v in dropped.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    for layer in dropped.layers:
        zero = (layer.weight_hh_l0.grad == 0).float().mean().item()
        assert 0.35 < zero < 0.65, zero  # the dropped half gets no gradient
        assert (layer.weight_ih_l0.grad != 0).float().mean() > 0.9  # input weights are not dropped
    # one mask for the whole batch and every step: with the same draw, a padded batch row equals that row alone
    lengths = torch.tensor([7, 4, 2])
    torch.manual_seed(1)
    batch, _ = dropped(tokens, lengths)
    torch.manual_seed(1)
    alone, _ = dropped(tokens[1:2, :4])
    torch.testing.assert_close(batch[1:2, :4], alone)


def test_variational_dropout_keeps_one_mask_along_time():
    drop = LockedDropout(0.5, batch_first=True).train()
    out = drop(torch.ones(4, 9, 16))
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same at every step
    assert not torch.equal(out[0], out[1])  # a mask per sequence
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(LockedDropout(0.5, batch_first=False).eval()(out), out)
    torch.testing.assert_close(
        encoder("lstm", dropout=0.3, variational=True)(torch.randint(1, 11, (2, 5)))[0].shape, torch.Size([2, 5, 5])
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cell": "transformer", "vocab_size": 5}, "cell must be one of rnn, lstm, gru"),
        ({"cell": "lstm", "vocab_size": 5, "recurrent_init": "identity"}, "IRNN"),
        ({"cell": "gru"}, "exactly one of vocab_size"),
        ({"cell": "gru", "vocab_size": 5, "dropout": 1.0}, "0 <= dropout < 1"),
        ({"cell": "rnn", "vocab_size": 5, "nonlinearity": "sigmoid"}, "nonlinearity must be one of"),
        ({"cell": "lstm", "vocab_size": 5, "weight_drop": 1.0}, "weight_drop is a probability"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecurrentEncoder(**kwargs)


def test_bf16_autocast_on_an_avx2_cpu():
    """oneDNN's bf16 LSTM fails on AVX2-only CPUs; the encoder keeps the recurrence in fp32 there. Emulated on any
    CPU with ONEDNN_MAX_CPU_ISA=AVX2 (read when oneDNN loads: a fresh process)."""
    code = (
        "import torch; from zoo.nets.recurrent import RecurrentEncoder as R\n"
        "for cell in ('lstm', 'gru', 'rnn'):\n"
        "    enc = R(cell=cell, vocab_size=9, hidden_size=8, num_layers=2, bidirectional=True)\n"
        "    for lengths in (None, torch.tensor([6, 2, 5, 1])):  # padded (oneDNN kernel) and packed\n"
        "        with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "            out, _ = enc(torch.randint(1, 9, (4, 6)), lengths)\n"
        "        out.sum().backward()\n"
        "        assert torch.isfinite(out).all()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
