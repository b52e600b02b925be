"""fastbert.BertModel against transformers' BertModel on real sentences (fp32, reference backend)."""
import os

import pytest
import torch

from fastbert import BertConfig, BertForMaskedLM, BertModel, BertTokenizer
from fastbert.pretrained import default_path, to_fastbert
from tests._data import read_tsv_column
from tests._tolerance import max_rel_err

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf():
    return transformers.BertModel.from_pretrained(default_path(), attn_implementation="eager")


@pytest.fixture(scope="module")
def batch(data_dir):
    rows = read_tsv_column(os.path.join(data_dir, "cs224n", "sts-dev.csv"), "sentence1", "sentence2")
    a = [r[0] for r in rows[:6]] + ["Hi.", rows[7][0] * 3]
    b = [r[1] for r in rows[:6]] + ["Yes.", rows[7][1]]
    tok = BertTokenizer.from_pretrained()
    enc = tok(a, b)
    assert len(set(enc.lengths.tolist())) > 4  # mixed lengths
    return tok, enc, a, b


@pytest.mark.parametrize("unpad", [True, False])
def test_eval_outputs_match_hf(hf, batch, unpad):
    _, enc, _, _ = batch
    model = BertModel.from_pretrained(backend="reference", unpad=unpad).eval()
    with torch.no_grad():
        ours = model(**enc.model_inputs())
        ref = hf.eval()(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        token_type_ids=enc.token_type_ids)
    real = enc.attention_mask.bool()
    torch.testing.assert_close(ours.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)
    assert (ours.last_hidden_state[~real] == 0).all()


def test_packed_input_matches_padded(batch):
    tok, enc, a, b = batch
    model = BertModel.from_pretrained(backend="reference").eval()
    packed = tok(a, b, packed=True)
    with torch.no_grad():
        p = model(**packed.model_inputs())
        q = model(**enc.model_inputs())
    torch.testing.assert_close(p.last_hidden_state, q.last_hidden_state[enc.attention_mask.bool()])
    torch.testing.assert_close(p.pooler_output, q.pooler_output)


def test_train_mode_gradients_match_hf(batch):
    _, enc, _, _ = batch
    cfg = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.BertModel.from_pretrained(default_path(), attn_implementation="eager", **cfg).train()
    config = BertConfig.from_json(default_path())
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = BertModel.from_pretrained(config=config, backend="reference").train()
    real = enc.attention_mask.bool()
    w = torch.randn(*real.shape, config.hidden_size)  # a loss that touches every real output
    ours = model(**enc.model_inputs())
    ref = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask, token_type_ids=enc.token_type_ids)
    ((ours.last_hidden_state * w)[real].sum() + ours.pooler_output.sum()).backward()
    ((ref.last_hidden_state * w)[real].sum() + ref.pooler_output.sum()).backward()
    ref_grads = to_fastbert({n: q.grad for n, q in hf.named_parameters()})
    # fp32 sums in another order: the error is compared with each gradient's own scale
    errors = {name: max_rel_err(p.grad, ref_grads[name]) for name, p in model.named_parameters()}
    assert len(errors) == len(ref_grads)
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_random_init_bert_base_shapes():
    model = BertModel(BertConfig.bert_base())
    n = sum(p.numel() for p in model.parameters())
    assert 109_000_000 < n < 110_000_000  # bert-base-uncased: 109.48M
    out = model(torch.randint(0, 30522, (2, 9)))
    assert out.last_hidden_state.shape == (2, 9, 768) and out.pooler_output.shape == (2, 768)


def test_bad_inputs():
    model = BertModel(BertConfig.minilm_l6(num_hidden_layers=1))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 30522\)"):
        model(torch.tensor([[101, 40000, 102]]))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 512"):
        model(torch.ones(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="right-padded"):
        BertModel(model.config, unpad=False)(torch.ones(1, 3, dtype=torch.long),
                                             attention_mask=torch.tensor([[0, 1, 1]]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.ones(1, 3))
    with pytest.raises(ValueError, match="unknown fastbert backend"):
        BertModel(model.config, backend="cuda")


def test_left_padding_works_when_unpadded():
    model = BertModel(BertConfig.minilm_l6(num_hidden_layers=2)).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    left = torch.tensor([[0, 0, 101, 7592, 2088, 102]])
    with torch.no_grad():
        a = model(ids, position_ids=torch.arange(4)[None]).last_hidden_state
        b = model(left, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]),
                  position_ids=torch.tensor([[0, 0, 0, 1, 2, 3]])).last_hidden_state
    torch.testing.assert_close(a[0], b[0, 2:])


def test_token_buckets():
    from fastbert.ops.padding import token_bucket

    sizes = [token_bucket(t) for t in range(1, 20000)]
    assert all(s >= t and (s - t) <= t / 8 + 16 for t, s in zip(range(1, 20000), sizes))  # at most ~12.5% more
    assert all(s % 16 == 0 for s in sizes) and token_bucket(0) == 0
    assert len(set(token_bucket(t) for t in range(257, 513))) == 8  # 8 sizes per octave
    assert len(set(sizes)) < 250  # few shapes for the matmuls over any token count up to 20000


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_bucketed_tokens_change_nothing(dropout):
    """The dummy sequence that rounds the token count up leaves every real output and gradient as it was
    (fp32: the same kernels on the same rows; dropout masks are per row, so the same too)."""
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).train()
    ids = torch.randint(1, 97, (3, 23))
    mask = (torch.arange(23)[None, :] < torch.tensor([[23], [5], [1]])).long()  # 29 tokens -> 32
    labels = torch.where(torch.rand(3, 23) < 0.3, ids, torch.full_like(ids, -100)) * mask - 100 * (1 - mask)
    results = []
    for bucket in (False, True):
        model.bert.bucket_tokens = bucket
        torch.manual_seed(1)
        out = model.bert(input_ids=ids, attention_mask=mask)
        loss, logits = model(ids, labels=labels, attention_mask=mask)
        total = loss + out.last_hidden_state.square().sum() + out.pooler_output.sum()
        results.append((out.last_hidden_state, logits, torch.autograd.grad(total, list(model.parameters()))))
    (h0, l0, g0), (h1, l1, g1) = results
    torch.testing.assert_close(h1, h0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(l1, l0, atol=1e-6, rtol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unpad", [True, False])
def test_dropout_masks_follow_the_sequence_keys(unpad):
    """Training mode: a sequence's dropout masks depend on its key (dropout_keys) and positions alone, so a batch
    cut in two, each half with its sequences' keys, gives the whole batch's outputs (what lets ranks share a
    batch); padded and packed runs draw the same masks; without the keys the second half draws others."""
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=64, hidden_dropout_prob=0.2,
                        attention_probs_dropout_prob=0.2)
    torch.manual_seed(0)
    model = BertModel(config, unpad=unpad).train()
    ids = torch.randint(1, 97, (4, 11))
    mask = (torch.arange(11)[None, :] < torch.tensor([[11], [4], [7], [1]])).long()
    keys = torch.tensor([30, 2, 17, 5])

    def run(rows, keyed=True, **kw):
        torch.manual_seed(1)
        return model(ids[rows], attention_mask=mask[rows], dropout_keys=keys[rows] if keyed else None,
                     **kw).last_hidden_state

    full = run(slice(0, 4))
    halves = torch.cat([run(slice(0, 2)), run(slice(2, 4))])
    real = mask.bool()
    torch.testing.assert_close(halves[real], full[real], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(run(slice(2, 4), keyed=False)[real[2:]], full[2:][real[2:]], atol=1e-3)
    model.unpad = not unpad
    torch.testing.assert_close(run(slice(0, 4))[real], full[real], atol=1e-5, rtol=1e-5)


def test_bucketing_is_on_for_cpu_bf16_only():
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=64)
    model = BertModel(config)
    cpu = torch.device("cpu")
    assert not model.bucketed(cpu) and not model.bucketed(torch.device("cuda"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.bucketed(cpu)
    assert model.to(torch.bfloat16).bucketed(cpu)
    assert not BertModel(config, bucket_tokens=False).to(torch.bfloat16).bucketed(cpu)
