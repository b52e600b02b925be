"""Dropout keys (fastbert.ops.philox): the mask of a row (layer_norm, embedding_layer_norm, dropout) or of a
sequence (attention) depends on its key and the seed alone, on every backend. So shares of a batch, each run
with its rows' keys, draw the masks of the whole batch (what lets N ranks follow one process), and the
backends agree with the reference."""
import pytest
import torch

from fastbert import _extension, ops, use_backend
from fastbert.ops import philox
from tests._device import DEVICE

SEED = 11
P = 0.3
SHARES = [slice(0, 3), slice(3, 7), slice(7, 10)]


def _device(backend):
    """Where `backend` runs here, or a skip."""
    if backend == "cpu" and not _extension.has("layer_norm_forward"):
        pytest.skip(f"C++ extension unavailable: {_extension.status()}")
    if backend == "triton":
        if DEVICE is None:
            pytest.skip("no device for Triton here")
        return DEVICE
    return "cpu"


def _run(backend, fn, inputs, grad_of):
    """fn(*inputs) under `backend` with the seed drawn after torch.manual_seed(SEED): (out, grads of the inputs
    at positions grad_of)."""
    leaves = [t.detach().clone().requires_grad_(i in grad_of) if isinstance(t, torch.Tensor) else t
              for i, t in enumerate(inputs)]
    torch.manual_seed(SEED)
    with use_backend(backend):
        out = fn(*leaves)
    if grad_of:
        out.backward(torch.ones_like(out) + torch.arange(out.shape[-1], device=out.device) / out.shape[-1])
    return out.detach(), [leaves[i].grad for i in grad_of]


def _shares_follow_the_batch(backend, fn, inputs, keys, grad_of, cut, close):
    """Each share of rows (cut(t, share) of every input and of keys) gives the whole batch's rows of the output
    and of the gradients of the inputs at grad_of (row-wise ones); the whole batch's agree with the reference."""
    full, full_grads = _run(backend, fn, [*inputs, keys], grad_of)
    reference, reference_grads = _run("reference", fn, [*inputs, keys], grad_of)
    close(full, reference)
    for a, b in zip(full_grads, reference_grads):
        close(a, b)
    for share in SHARES:
        out, grads = _run(backend, fn, [cut(t, share) for t in (*inputs, keys)], grad_of)
        close(out, full[share])
        for a, b in zip(grads, full_grads):  # the row-wise inputs' gradients
            close(a, b[share])
    without = _run(backend, fn, [*inputs, None], grad_of)[0]  # rows keyed by position: other masks
    assert not torch.allclose(without, full)


def _rows(t, share):
    return t if not isinstance(t, torch.Tensor) or t.dim() == 1 and t.dtype != torch.int64 else t[share]


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


KEYS = torch.tensor([7, 0, 2**40 + 3, 5, 1, 12, 99, 3, 2, 2**20])  # any order, gaps, large values


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("n", [64, 45])  # rows starting Philox groups, and inside them
def test_layer_norm_rows_keep_their_masks(backend, n):
    device = _device(backend)
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(10, n, generator=g).to(device) for _ in range(2))
    w, b, ib = (torch.randn(n, generator=g).to(device) for _ in range(3))

    def fn(x, r, w, b, ib, keys):
        return ops.layer_norm(x, w, b, 1e-5, residual=r, input_bias=ib, dropout_p=P, dropout_keys=keys)

    _shares_follow_the_batch(backend, fn, [x, r, w, b, ib], KEYS.to(device), [0, 1], _rows, _close)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_embedding_rows_keep_their_masks(backend):
    device = _device(backend)
    g = torch.Generator().manual_seed(0)
    n = 48
    ids, types, pos = (torch.randint(0, k, (10,), generator=g).to(device) for k in (30, 2, 16))
    word, type_t, pos_t = (torch.randn(k, n, generator=g).to(device) for k in (30, 2, 16))
    w, b = (torch.randn(n, generator=g).to(device) for _ in range(2))

    def fn(ids, types, pos, word, type_t, pos_t, w, b, keys):
        return ops.embedding_layer_norm(ids, types, pos, word, type_t, pos_t, w, b, 1e-5, dropout_p=P,
                                        dropout_keys=keys)

    def cut(t, share):  # the id vectors and keys are cut; the tables and weights are whole
        return t[share] if isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype == torch.int64 else t

    inputs = [ids, types, pos, word, type_t, pos_t, w, b, KEYS.to(device)]
    _shares_follow_the_batch(backend, fn, inputs[:-1], inputs[-1], [], cut, _close)
    # the gradients (of the tables, summed over the rows) regenerate the masks: the whole batch's against the reference
    ours, reference = (_run(impl, fn, inputs, [3, 4, 5, 6, 7])[1] for impl in (backend, "reference"))
    for a, b in zip(ours, reference):
        _close(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_attention_sequences_keep_their_masks(backend):
    """Packed sequences (head dim 32, fp32): each share of sequences, with their keys, gives the batch's
    outputs and gradients for them; the padded form with the same keys draws the same masks."""
    device = _device(backend)
    g = torch.Generator().manual_seed(0)
    lens = [5, 17, 1, 9]
    keys = torch.tensor([40, 3, 2**24, 8], device=device)
    H, D = 2, 32
    q, k, v = (torch.randn(sum(lens), H, D, generator=g).to(device) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)

    def fn(q, k, v, cu, keys):
        return ops.attention_varlen(q, k, v, cu, max(lens), dropout_p=P, dropout_keys=keys)

    full, full_grads = _run(backend, fn, [q, k, v, cu, keys], [0, 1, 2])
    reference, _ = _run("reference", fn, [q, k, v, cu, keys], [0, 1, 2])
    _close(full, reference)
    for first, last in ((0, 2), (2, 4)):
        rows = slice(int(cu[first]), int(cu[last]))
        part_cu = cu[first:last + 1] - cu[first]
        out, grads = _run(backend, fn, [q[rows], k[rows], v[rows], part_cu, keys[first:last]], [0, 1, 2])
        _close(out, full[rows])
        for a, b in zip(grads, full_grads):
            _close(a, b[rows])
    padded = torch.zeros(len(lens), max(lens), H, D, device=device)
    qp, kp, vp = (padded.clone().index_put_((torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)),
                                             torch.cat([torch.arange(n) for n in lens])), t) for t in (q, k, v))
    torch.manual_seed(SEED)
    with use_backend(backend):
        out = ops.attention(qp, kp, vp, torch.tensor(lens, dtype=torch.int32, device=device), dropout_p=P,
                            dropout_keys=keys)
    _close(torch.cat([out[i, :n] for i, n in enumerate(lens)]), full)


def test_head_dropout_rows_keep_their_masks():
    x = torch.randn(10, 40)
    torch.manual_seed(SEED)
    full = philox.dropout(x, P, KEYS)
    for share in SHARES:
        torch.manual_seed(SEED)
        assert torch.equal(philox.dropout(x[share], P, KEYS[share]), full[share])
    kept = full != 0
    assert 0.6 < kept.float().mean() < 0.8
    torch.testing.assert_close(full[kept], x[kept] / (1 - P))


def test_bad_keys_say_what_is_wrong():
    x, w = torch.randn(4, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r"dropout_keys must be an int64 tensor of shape \[4\]"):
        ops.layer_norm(x, w, w, dropout_p=0.1, dropout_keys=torch.arange(3))
    with pytest.raises(ValueError, match=r"dropout_keys must lie in \[0, "):
        ops.layer_norm(x, w, w, dropout_p=0.1, dropout_keys=torch.tensor([0, 1, -2, 3]))
    q = torch.randn(6, 2, 32)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"attention_varlen: dropout_keys must lie in \[0, 1073741824\)"):
        ops.attention_varlen(q, q, q, cu, 4, dropout_p=0.1, dropout_keys=torch.tensor([0, 2**30]))
