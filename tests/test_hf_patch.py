"""fastbert.patch_hf_bert: a patched transformers BERT computes what the unpatched one does, on HF's own
parameters (outputs and every parameter gradient, dropout off), with the reference ops and with the Triton
kernels (compiled on CUDA, the interpreter on CPU: the triton_device fixture)."""
import copy

import pytest
import torch

import fastbert
from fastbert import ops

transformers = pytest.importorskip("transformers")

LENGTHS = [11, 5, 1]  # right padding, down to a single real token


def _model(attn_implementation="eager", hidden_act="gelu", **overrides):
    config = transformers.BertConfig(**{
        **dict(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
               max_position_embeddings=16, hidden_act=hidden_act, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, num_labels=3), **overrides})
    config._attn_implementation = attn_implementation
    return transformers.BertForSequenceClassification(config).eval()


def _batch(lengths=LENGTHS, seq=11):
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, 50, (len(lengths), seq), generator=g) * mask
    return ids, mask, torch.randint(0, 2, ids.shape, generator=g)


def _forward_backward(model, ids, mask, types):
    """Hidden states at real tokens, logits, and every parameter's gradient of a loss over both."""
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    hidden = out.hidden_states[-1][mask.bool()]  # padded positions differ by design (see fastbert.hf)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(shape, generator=g).to(ids.device) for shape in (hidden.shape, 3)]
    loss = (hidden * weights[0]).sum() + (out.logits * weights[1]).sum()
    loss.backward()
    return hidden.detach(), out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])  # additive and boolean 4-D masks
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("op_backend", ["reference", pytest.param("triton", marks=pytest.mark.triton)])
def test_patched_model_matches_hf(attn_implementation, hidden_act, op_backend, request):
    device = request.getfixturevalue("triton_device") if op_backend == "triton" else torch.device("cpu")
    hf = _model(attn_implementation, hidden_act).to(device)
    fast = fastbert.patch_hf_bert(copy.deepcopy(hf), backend=op_backend)
    batch = [t.to(device) for t in _batch()]
    hidden, logits, grads = _forward_backward(fast, *batch)
    ref_hidden, ref_logits, ref_grads = _forward_backward(hf, *batch)
    torch.testing.assert_close(hidden, ref_hidden, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_state_dict_and_parameters_unchanged(tmp_path):
    hf = _model()
    before = hf.state_dict()
    params = dict(hf.named_parameters())
    fastbert.patch_hf_bert(hf)
    after = hf.state_dict()
    assert list(after) == list(before) and all(after[k] is not None and torch.equal(after[k], before[k]) for k in after)
    assert all(p is params[n] for n, p in hf.named_parameters())  # the same tensors: optimizers keep working
    hf.save_pretrained(tmp_path)
    reloaded = fastbert.patch_hf_bert(transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval())
    ids, mask, types = _batch()
    torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits,
                               hf(input_ids=ids, attention_mask=mask).logits)


def test_modules_use_fastbert_ops(monkeypatch):
    calls = []
    for name in ("attention", "layer_norm", "bias_gelu"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _op=op, _name=name, **k: calls.append(_name) or _op(*a, **k))
    model = fastbert.patch_hf_bert(_model())
    model(input_ids=_batch()[0], attention_mask=_batch()[1])
    # embeddings LayerNorm, then per layer: attention, add & norm, GELU, add & norm
    assert calls == ["layer_norm"] + ["attention", "layer_norm", "bias_gelu", "layer_norm"] * 2


def test_training_dropout_is_reproducible():
    model = _model(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    fastbert.patch_hf_bert(model)
    ids, mask, _ = _batch()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(model(input_ids=ids, attention_mask=mask).logits)
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_unsupported_masks_and_models_raise():
    model = fastbert.patch_hf_bert(_model("sdpa"))
    ids, mask, _ = _batch()
    with pytest.raises(ValueError, match="right-padded"):
        model(input_ids=ids, attention_mask=mask.flip(1))  # left padding
    causal = torch.tril(torch.ones(11, 11, dtype=torch.bool)).expand(3, 1, 11, 11)
    with pytest.raises(ValueError, match="differs between queries"):
        model(input_ids=ids, attention_mask=causal)
    with pytest.raises(ValueError, match="decoder"):
        fastbert.patch_hf_bert(_model(is_decoder=True))
    with pytest.raises(ValueError, match="no transformers BERT modules"):
        fastbert.patch_hf_bert(torch.nn.Linear(2, 2))
