"""torch.compile traces the fused ops as custom ops (their fake and autograd registrations), and the compiled
code computes what eager code does. Eager calls skip the custom-op dispatch (fastbert.ops._fused), so
these tests are where the custom-op path runs on CPU."""
import pytest
import torch

import fastbert
from fastbert import BertConfig, BertModel, ops
from tests._compile import recording_backend


@pytest.fixture(autouse=True)
def cpu_kernels():
    torch._dynamo.reset()
    with fastbert.use_backend("cpu"):
        yield
    torch._dynamo.reset()


def assert_same(loss, grads, eager_loss, eager_grads):
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_ops_compile_fullgraph_and_match_eager():
    torch.manual_seed(0)
    x, res = torch.randn(5, 3, 48).requires_grad_(), torch.randn(5, 3, 48).requires_grad_()
    w, b, ib = (torch.randn(48).requires_grad_() for _ in range(3))
    args = (x, res, w, b, ib)

    def fn(x, res, w, b, ib):
        h = ops.layer_norm(x, w, b, 1e-5, residual=res, input_bias=ib)
        return ops.bias_gelu(h, ib).square().sum()

    seen = set()
    loss = torch.compile(fn, backend=recording_backend(seen), fullgraph=True)(*args)
    grads = torch.autograd.grad(loss, args)
    assert {"fastbert.layer_norm_forward.default", "fastbert.bias_gelu_forward.default"} <= seen, seen
    eager_loss = fn(*args)
    assert_same(loss, grads, eager_loss, torch.autograd.grad(eager_loss, args))


def test_model_compiles_and_matches_eager():
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertModel(config).train()
    ids = torch.randint(1, 97, (3, 11))
    mask = (torch.arange(11)[None, :] < torch.tensor([[11], [4], [1]])).long()

    def loss_of(m):
        out = m(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state.square().sum() + out.pooler_output.sum()

    seen = set()
    compiled = torch.compile(model, backend=recording_backend(seen))
    loss = loss_of(compiled)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ops_seen = {s.split(".")[1] for s in seen if s.startswith("fastbert.")}
    assert {"embedding_layer_norm_forward", "layer_norm_forward", "bias_gelu_forward",
            "attention_varlen_forward"} <= ops_seen, seen
    eager_loss = loss_of(model)
    assert_same(loss, grads, eager_loss, torch.autograd.grad(eager_loss, list(model.parameters())))
