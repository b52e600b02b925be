"""embedding_layer_norm on the Triton kernels (compiled on CUDA, the interpreter on CPU) against the
reference: output and the gradients of the three tables and the norm's weight and bias, with and without
dropout, in fp32 / fp16 / bf16 tables. Tolerances (tests/_tolerance.py): 1e-5 in fp32; four roundings of the
16-bit dtype (three table rows summed, then normalised), the table gradients summed over tokens."""
import pytest
import torch

from fastbert import ops, use_backend
from tests._device import DEVICE, TRITON_MARKS
from tests._tolerance import TOL, assert_close

pytestmark = TRITON_MARKS
pytest.importorskip("triton")


def _run(backend, inputs, p, seed=0):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with use_backend(backend):
        out = ops.embedding_layer_norm(*leaves, 1e-12, dropout_p=p, padding_idx=0,
                                       generator=torch.Generator().manual_seed(seed))
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype))
    return [out] + [t.grad for t in leaves if t.requires_grad]


@pytest.mark.parametrize("tokens, n", [(1, 384), (37, 64), (21, 1000), (8, 3)])
@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, TOL[torch.float32]), (torch.float16, 4 * TOL[torch.float16]),
                                        (torch.bfloat16, 4 * TOL[torch.bfloat16])])
def test_triton_matches_reference(tokens, n, p, dtype, tol):
    V, P, T2 = 40, 30, 2
    ids = torch.randint(0, V, (tokens,))
    ids[::3] = 0  # the padding row: no gradient
    inputs = [t.to(DEVICE) for t in (ids, torch.randint(0, T2, (tokens,)), torch.randint(0, P, (tokens,)),
                                     *(torch.randn(rows, n).to(dtype) for rows in (V, T2, P)),
                                     torch.randn(n), torch.randn(n))]
    ours, ref = _run("triton", inputs, p), _run("reference", inputs, p)
    names = ["out", "word", "token_type", "position", "weight", "bias"]
    for name, a, r in zip(names, ours, ref):
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert_close(a, r, tol, what=name)
    assert (ours[1][0] == 0).all()
