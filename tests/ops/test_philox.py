"""The shared dropout RNG: the PyTorch reference equals Triton's Philox bit for bit."""
import pytest
import torch

from fastbert.ops import philox
from tests._device import DEVICE, needs_triton

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402


@triton.jit
def _bits16_kernel(out, seed, base, N: tl.constexpr):
    i = base + tl.arange(0, N).to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, i >> 3)
    w = (i & 7) >> 1
    r = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
    tl.store(out + tl.arange(0, N), ((r >> (16 * (i & 1)).to(tl.uint32)) & 0xFFFF).to(tl.int32))


@pytest.mark.parametrize("seed", [0, 12345, 2**61 + 77, 2**62 - 1])
@pytest.mark.parametrize("base", [0, 8, (5 << 32) | (3 << 16), 2**40 + 8])
@needs_triton
def test_reference_equals_triton_randint4x(seed, base):
    out = torch.empty(128, dtype=torch.int32, device=DEVICE)
    _bits16_kernel[(1,)](out, seed, base, N=128)
    assert torch.equal(out.cpu(), philox.bits16(seed, torch.tensor([base]), 128)[0])


def test_keep_rate_and_independence():
    p = 0.1
    keep = philox.keep_mask_rows(7, p, 512, 384)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.003
    other = philox.keep_mask_rows(8, p, 512, 384)
    assert 0.80 < (keep == other).float().mean().item() < 0.84  # independent: 0.9^2 + 0.1^2
    att = philox.keep_mask_attention(7, 0.5, 3, 2, 17, 9)
    assert att.shape == (3, 2, 17, 9) and abs(att.float().mean().item() - 0.5) < 0.05


def test_attention_mask_does_not_depend_on_padded_length():
    a = philox.keep_mask_attention(3, 0.3, 2, 4, 5, 5)
    b = philox.keep_mask_attention(3, 0.3, 2, 4, 11, 11)
    assert torch.equal(a, b[:, :, :5, :5])


def test_draw_seed_follows_torch_manual_seed():
    torch.manual_seed(1)
    a = [philox.draw_seed() for _ in range(3)]
    torch.manual_seed(1)
    assert a == [philox.draw_seed() for _ in range(3)] and len(set(a)) == 3


def test_threshold():
    assert philox.threshold(0.0) == 0 and philox.threshold(0.1) == 6554 and philox.threshold(0.5) == 32768
    with pytest.raises(ValueError, match="multiple of 8"):
        philox.bits16(1, torch.tensor([3]), 4)
