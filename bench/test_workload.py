"""The benchmark workload's own pieces (runs in quick mode, no timing): the hf-bf16-pad8 baseline's layout, which
variants a device without bf16 matmuls runs."""
import pytest
import torch

from bench import workload
from bench.machine import results_name
from bench.rounds import SPEEDUP_VARIANTS, speedup_variants
from bench.workload import PAD_MULTIPLE, LayoutBatch, real_batches
from fastbert import backend


def test_padded8_layout_pads_to_a_multiple_of_8_with_masked_pad_tokens(tasks, tokenizer):
    for b in real_batches(tasks, tokenizer, n=3, batch_size=5, seed=4):
        p, p8 = b.padded, b.padded8
        S, S8 = p.input_ids.shape[1], p8.input_ids.shape[1]
        assert S8 % PAD_MULTIPLE == 0 and S <= S8 < S + PAD_MULTIPLE
        for name in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(getattr(p8, name)[:, :S], getattr(p, name))
        assert (p8.input_ids[:, S:] == tokenizer.pad_id).all() and not p8.attention_mask[:, S:].any()
        assert b.processed_tokens("padded8") == p8.input_ids.numel() >= b.processed_tokens("padded")
        assert b.processed_tokens("packed") == b.tokens == int(p.attention_mask.sum())


def test_task_batch_moves_every_layout(tasks, tokenizer):
    b = real_batches(tasks, tokenizer, n=1, batch_size=2)[0].to("cpu")
    assert isinstance(b, LayoutBatch) and b.padded8.input_ids.shape[1] % PAD_MULTIPLE == 0


@pytest.mark.parametrize("has_bf16", [True, False])
def test_variants_follow_the_devices_bf16_matmuls(monkeypatch, has_bf16):
    """Without bf16 matmuls fastbert runs fp32 (as the driver's auto) and a timed run leaves out every bf16 variant
    and fastbert-fp32 (the same as fastbert there); with them nothing is left out. Quick mode runs everything."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(backend, "bf16_matmuls", lambda device: has_bf16)
    monkeypatch.setattr(workload, "QUICK", False)
    assert workload.precision_of("fastbert", cpu) == ("bf16" if has_bf16 else "fp32")
    assert workload.precision_of("hf-bf16", cpu) == "bf16-autocast"
    left_out = {v for v in workload.VARIANTS if workload.timed_skip(v, cpu)}
    bf16 = {v for v, var in workload.VARIANTS.items() if var.precision != "fp32"} - {"fastbert"}
    assert left_out == (set() if has_bf16 else bf16 | {"fastbert-fp32"})
    assert speedup_variants(cpu) == (SPEEDUP_VARIANTS if has_bf16 else ("fastbert", "hf-fp32"))
    assert results_name(cpu) == ("cpu" if has_bf16 else "cpu-fp32")
    monkeypatch.setattr(workload, "QUICK", True)
    assert not any(workload.timed_skip(v, cpu) for v in workload.VARIANTS)
