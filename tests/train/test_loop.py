import pytest
import torch

from fastbert import BertConfig, BertModel, BertTokenizer, backend
from fastbert.train import loop


def test_freeze_schedules():
    assert loop.frozen_at(True, 5) and not loop.frozen_at(False, 5) and not loop.frozen_at(None, 0)
    assert [loop.frozen_at([2, 4], s) for s in range(6)] == [False, False, True, True, False, False]
    assert [loop.frozen_at([3, None], s) for s in (2, 3, 100)] == [False, True, True]


def test_frozen_encode_has_no_gradient_and_no_dropout():
    enc = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                               hidden_dropout_prob=0.5), backend="reference").train()
    batch = BertTokenizer.from_pretrained()(["a lovely film", "no"])
    frozen = loop.Encode(enc, frozen=True)
    a, b = frozen(batch).last_hidden_state, frozen(batch).last_hidden_state
    assert not a.requires_grad and torch.equal(a, b) and enc.training
    assert not frozen.word_embeddings.requires_grad
    live = loop.Encode(enc)(batch).last_hidden_state
    assert live.requires_grad and not torch.equal(live, a)  # dropout on


@pytest.mark.parametrize("has_bf16, resolved", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpus_bf16_matmuls(monkeypatch, has_bf16, resolved):
    """auto: bf16 weights where the CPU multiplies bf16 in hardware, fp32 where a bf16 matmul is a slow loop."""
    monkeypatch.setattr(backend, "bf16_matmuls", lambda device: has_bf16)
    assert loop.precision({"precision": "auto", "optimizer": "fused_adamw"}, torch.device("cpu")) == resolved


@pytest.mark.parametrize("setting, optimizer, resolved", [
    ("fp32", "auto", "fp32"), ("bf16", "fused_adamw", "bf16"), ("bf16-autocast", "adamw", "bf16-autocast"),
    ("auto", "fused_adamw", "bf16"), ("auto", "adamw", "bf16-autocast")])
def test_precision_settings(setting, optimizer, resolved):
    if setting == "auto" and not backend.bf16_matmuls(torch.device("cpu")):
        resolved = "fp32"
    assert loop.precision({"precision": setting, "optimizer": optimizer}, torch.device("cpu")) == resolved
    assert loop.autocast_dtype(resolved) == (torch.bfloat16 if resolved == "bf16-autocast" else None)
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        loop.precision({"precision": "fp16", "optimizer": optimizer}, torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be"):
        loop.precision({"precision": "fp8", "optimizer": optimizer}, torch.device("cpu"))
    with pytest.raises(ValueError, match="use optimizer fused_adamw"):
        loop.precision({"precision": "bf16", "optimizer": "adamw"}, torch.device("cpu"))
