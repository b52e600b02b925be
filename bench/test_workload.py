"""The benchmark workload's own pieces (runs in quick mode, no timing): the hf-bf16-pad8 baseline's layout."""
import torch

from bench.workload import PAD_MULTIPLE, LayoutBatch, real_batches


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
