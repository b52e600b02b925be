"""torch.compile of the model on backend "triton": the fused ops trace as custom ops whose real kernels are the
Triton ones (compiled on CUDA, the interpreter on CPU), and the compiled model computes what eager code does
(loss and every parameter gradient). On CUDA also through inductor, torch.compile's default backend."""
import pytest
import torch

import fastbert
from fastbert import BertConfig, BertModel
from tests._device import CUDA, DEVICE, TRITON_MARKS
from tests._compile import recording_backend

pytestmark = TRITON_MARKS


@pytest.fixture(autouse=True)
def triton_kernels():
    torch._dynamo.reset()
    with fastbert.use_backend("triton"):
        yield
    torch._dynamo.reset()


def _loss(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    return out.last_hidden_state.square().sum() + out.pooler_output.sum()


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.skipif(
    not CUDA, reason="inductor compiles the graph around the Triton ops for a GPU here; on CPU aot_eager"))])
def test_model_compiles_on_triton_and_matches_eager(compiler):
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertModel(config, backend="triton").to(DEVICE).train()
    ids = torch.randint(1, 97, (3, 11), device=DEVICE)
    mask = (torch.arange(11, device=DEVICE)[None, :] < torch.tensor([[11], [4], [1]], device=DEVICE)).long()
    seen = set()
    compiled = torch.compile(model, backend=recording_backend(seen) if compiler == "aot_eager" else "inductor")
    loss = _loss(compiled, ids, mask)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    if compiler == "aot_eager":
        ops_seen = {s.split(".")[1] for s in seen if s.startswith("fastbert.")}
        assert {"embedding_layer_norm_forward", "layer_norm_forward", "bias_gelu_forward",
                "attention_varlen_forward"} <= ops_seen, seen
    eager_loss = _loss(model, ids, mask)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
