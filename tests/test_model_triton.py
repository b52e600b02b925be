"""A small BERT on backend "triton" equals backend "reference": outputs, an MLM + pooler loss and every
parameter gradient, padded (unpad=False: the padded attention kernel) with dropout on (the same torch seed
draws the same Philox masks on both backends) and packed (the varlen kernel) with dropout off. The kernel
tests cover the other combinations (packed dropout equals padded dropout bit for bit). On CUDA the model runs
the compiled kernels (tests/_device.py)."""
import pytest
import torch
import torch.nn.functional as F

from fastbert import BertConfig, BertForMaskedLM, use_backend
from fastbert.ops import padding
from tests._device import DEVICE, TRITON_MARKS
from tests._tolerance import max_rel_err

pytestmark = TRITON_MARKS
pytest.importorskip("triton")


def _batch(packed: bool):
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([19, 6, 1], dtype=torch.int32)
    S = int(lens.max())
    mask = (torch.arange(S)[None, :] < lens[:, None]).to(torch.int64)
    ids = torch.randint(1, 97, (len(lens), S), generator=g) * mask
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, -100)
    labels[0, 0] = ids[0, 0]  # at least one masked position
    if packed:
        real = mask.bool()
        inputs = dict(input_ids=ids[real], cu_seqlens=padding.seqlens_to_cu(lens), max_seqlen=S)
        labels = labels[real]
    else:
        inputs = dict(input_ids=ids, attention_mask=mask)
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in inputs.items()}, labels.to(DEVICE)


def _step(model, inputs, labels, seed):
    """Forward + backward of an MLM loss plus a pooler term: (hidden states, pooler, loss, grads)."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = model.bert(**inputs)
    h = out.last_hidden_state.reshape(-1, model.config.hidden_size)
    sel = labels.reshape(-1) != -100
    with use_backend(model.bert.backend):
        logits = model.cls(h[sel], model.bert.embeddings.word_embeddings.weight)
    pool_w = torch.linspace(-1, 1, model.config.hidden_size, device=DEVICE)
    loss = F.cross_entropy(logits, labels.reshape(-1)[sel]) + (out.pooler_output * pool_w).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.last_hidden_state.detach(), out.pooler_output.detach(), loss.detach(), grads


@pytest.mark.parametrize("packed, dropout", [(False, 0.1), (True, 0.0)], ids=["padded-dropout", "packed"])
def test_triton_model_equals_reference(packed, dropout):
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    ref = BertForMaskedLM(config, backend="reference", unpad=False).to(DEVICE).train()
    tri = BertForMaskedLM(config, backend="triton", unpad=False).to(DEVICE).train()
    tri.load_state_dict(ref.state_dict())
    inputs, labels = _batch(packed)
    expected = _step(ref, inputs, labels, seed=1)
    actual = _step(tri, inputs, labels, seed=1)
    for name, a, e in zip(("hidden", "pooler", "loss"), actual[:3], expected[:3]):
        assert max_rel_err(a, e) < 1e-5, name
    assert actual[3].keys() == expected[3].keys() and len(actual[3]) == len(list(ref.parameters()))
    for name, g in expected[3].items():
        assert max_rel_err(actual[3][name], g) < 1e-4, name
