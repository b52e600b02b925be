"""SMART regularisation (fastbert.tasks.smart) on a tiny encoder: off at weight 0 (the task loss and gradients
as a direct formula), a positive term whose gradient reaches the encoder for every sentence head, the ascent
step along the divergence's gradient (finite differences), the projection, the encoder's perturbation hook."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastbert import BertConfig, BertModel, BertTokenizer, tasks
from fastbert.data.batching import Loader
from fastbert.data.readers import Example
from fastbert.tasks import smart
from fastbert.tasks.base import Encode, pool

CFG = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PAPER = {"weight": 1.0, "eps": 1e-5, "step": 1e-3, "noise": 1e-5, "steps": 1}
LABELS = {"classify": [0, 1, 4, 2, 3, 1], "pair": [0, 1, 1, 0, 1, 0], "similarity": [0.0, 1.5, 5.0, 2.2, 3.3, 4.0]}
HEADS = [  # (task, settings, smoothness): the heads of the multitask routines, both encoder kinds
    ("sst", {}, "kl"),
    ("quora", {"loss": "softmax"}, "kl"),
    ("quora", {"encoder": "cross"}, "kl"),
    ("quora", {"loss": "cosine_mse"}, "mse"),
    ("sts", {}, "mse"),
    ("sts", {"encoder": "cross"}, "mse"),
]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.from_pretrained()


def _encoder(dropout=0.0, dtype=torch.float32):
    torch.manual_seed(0)
    cfg = BertConfig(**{**CFG.__dict__, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout})
    return BertModel(cfg, backend="reference").to(dtype).train()


def _task_and_batch(tok, name, settings, packed=False, dropout=0.0):
    torch.manual_seed(1)
    task = tasks.build(name, tasks.task_config(name, {"dropout": dropout, **settings}), CFG).train()
    kind = task.cfg["kind"]
    ex = [Example(str(i), (f"the film number {i} was good", f"a movie {'really ' * i}fine")[:1 if kind == "classify"
                                                                                          else 2], LABELS[kind][i])
          for i in range(6)]
    data = task.encode(ex, tok, 32)
    return task, Loader(data, tok, 6, shuffle=False, packed=packed).batch(np.arange(6))


def _grads(module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _direct_loss(task, encoder, b):
    """The task loss written out from the encoder's output (no Task.loss), for the weight-0 check."""
    e = pool(encoder(**b.inputs.model_inputs()), b.inputs, task.pooling).float().view(b.views, len(b), -1)
    if task.name == "sst":
        return F.cross_entropy(task.head(e[0]), b.labels)
    if task.name == "quora" and task.cross:
        return F.cross_entropy(task.head(e[0]), b.labels)
    if task.name == "quora" and task.loss_name == "softmax":
        return F.cross_entropy(task.head(torch.cat([e[0], e[1], (e[0] - e[1]).abs()], -1)), b.labels)
    if task.name == "quora":
        return (F.cosine_similarity(e[0], e[1], dim=-1) - b.labels.float()).square().mean()
    if task.cross:
        return (task.head(e[0]).squeeze(-1) - b.labels).square().mean()
    return (5 * F.cosine_similarity(e[0], e[1], dim=-1) - b.labels).square().mean()


def _loss_and_grads(fn, encoder, task):
    encoder.zero_grad(), task.zero_grad()
    torch.manual_seed(5)  # the same dropout draws
    value = fn()
    value.backward()
    return value.detach(), _grads(encoder) + _grads(task)


@pytest.mark.parametrize("name, settings, kind", HEADS)
def test_weight_zero_is_the_task_loss_and_its_gradients_exactly(tok, name, settings, kind):
    """Bit for bit the task's loss and gradients (no extra pass, no extra random draw), and those are the
    loss written out directly (to rounding: the reductions differ)."""
    encoder = _encoder(dropout=0.1)
    task, b = _task_and_batch(tok, name, settings, dropout=0.1)
    off, off_grads = _loss_and_grads(lambda: smart.loss(task, Encode(encoder), b, {**PAPER, "weight": 0.0}),
                                     encoder, task)
    plain, plain_grads = _loss_and_grads(lambda: task.loss(Encode(encoder), b), encoder, task)
    assert torch.equal(off, plain) and all(torch.equal(g, r) for g, r in zip(off_grads, plain_grads))
    direct, direct_grads = _loss_and_grads(lambda: _direct_loss(task, encoder, b), encoder, task)
    torch.testing.assert_close(plain, direct, rtol=1e-6, atol=1e-7)
    for g, r in zip(plain_grads, direct_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name, settings, kind", HEADS)
def test_positive_weight_adds_a_positive_term_whose_gradient_reaches_the_encoder(tok, name, settings, kind, packed):
    encoder = _encoder()
    task, b = _task_and_batch(tok, name, settings, packed)  # no dropout anywhere: f is deterministic
    assert task.smoothness == kind
    enc = Encode(encoder)
    plain = task.loss(enc, b).detach()
    value = smart.loss(task, enc, b, {**PAPER, "weight": 3.0, "eps": 1e-2})
    assert value.item() > plain.item()
    encoder.zero_grad(), task.zero_grad()
    e = task.embed(enc, b)
    reg = smart.regularizer(task, enc, b, task.outputs(e, b), {**PAPER, "eps": 1e-2})
    assert value.item() == pytest.approx(plain.item() + 3.0 * reg.item(), rel=1e-4)
    reg.backward()
    encoder_grads = [p.grad for p in encoder.encoder.parameters()]
    assert all(g is not None for g in encoder_grads) and sum(float(g.abs().sum()) for g in encoder_grads) > 0
    # the paper's settings in fp32: still a positive term
    assert smart.regularizer(task, enc, b, task.outputs(task.embed(enc, b), b), PAPER).item() > 0


@pytest.mark.parametrize("name, settings, kind", [HEADS[0], HEADS[2], HEADS[4]])
def test_bf16_weights(tok, name, settings, kind):
    """bf16 weights (precision bf16): delta is added in bf16, so the start noise and the step must exceed
    bf16's rounding of the embeddings to count (0.1 here). With the paper's 1e-5 noise, f(x + noise) rounds
    to f(x) exactly, where the divergence's gradient is zero: delta never moves, the term is 0 (no dropout)."""
    encoder = _encoder(dtype=torch.bfloat16)
    task, b = _task_and_batch(tok, name, settings)
    enc = Encode(encoder)
    with torch.no_grad():
        assert smart.regularizer(task, enc, b, task.outputs(task.embed(enc, b), b), PAPER).item() == 0.0
    large = {**PAPER, "noise": 1e-1, "step": 1e-1, "eps": 1e-1}
    value = smart.loss(task, enc, b, large)
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.encoder.parameters())
    with torch.no_grad():
        clean = task.outputs(task.embed(enc, b), b)
    assert smart.regularizer(task, enc, b, clean, large).item() > 0


def test_off_where_it_cannot_apply(tok):
    encoder = _encoder()
    task, b = _task_and_batch(tok, "sst", {})
    assert not smart.applies(task, Encode(encoder, frozen=True), PAPER)  # no gradient reaches delta
    assert not smart.applies(task, Encode(encoder), {**PAPER, "weight": 0})
    simcse = tasks.build("simcse", tasks.task_config("simcse"), CFG)
    assert simcse.smoothness is None and not smart.applies(simcse, Encode(encoder), PAPER)
    state = torch.get_rng_state()
    frozen = smart.loss(task, Encode(encoder, frozen=True), b, PAPER)
    assert torch.equal(torch.get_rng_state(), state)  # no noise drawn
    assert torch.equal(frozen, task.loss(Encode(encoder, frozen=True), b))


@pytest.mark.parametrize("packed", [False, True])
def test_ascent_step_follows_the_divergence_gradient(tok, packed):
    """One step from a known start delta0 (large noise, no clipping): delta1 = delta0 + step * g / max|g| per
    sequence, with g the gradient of D(delta) = sum_i ls(f(x_i + delta_i), f(x_i)) (checked against central
    finite differences through the encoder's perturbation hook), and D grows along the step."""
    encoder = _encoder()
    task, b = _task_and_batch(tok, "sts", {"encoder": "cross"}, packed)
    enc = Encode(encoder)
    clean = task.outputs(task.embed(enc, b), b).detach()
    settings = {**PAPER, "noise": 0.2, "step": 0.05, "eps": 10.0}
    torch.manual_seed(7)
    delta1 = smart.adversarial(task, enc, b, clean, settings)
    torch.manual_seed(7)
    delta0 = torch.randn(delta1.shape) * settings["noise"]

    def D(delta):
        return smart.divergence("mse", task.outputs(task.embed(enc, b, delta), b), clean).sum()

    x = delta0.clone().requires_grad_(True)
    g, = torch.autograd.grad(D(x), x)
    h = 1e-2
    for flat in torch.topk(g.abs().flatten(), 5).indices.tolist():
        e = torch.zeros(g.numel())
        e[flat] = h
        with torch.no_grad():
            fd = (D(delta0 + e.view_as(g)).double() - D(delta0 - e.view_as(g)).double()) / (2 * h)
        assert float(g.view(-1)[flat]) == pytest.approx(float(fd), rel=0.02)
    lengths = b.inputs.lengths.long()
    if packed:  # each token's gradient divided by its own sequence's largest
        seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        per_seq = torch.stack([g[seq == i].abs().max() for i in range(len(lengths))])[seq][:, None]
    else:
        per_seq = g.abs().amax((1, 2), keepdim=True)
    torch.testing.assert_close(delta1, delta0 + settings["step"] * g / per_seq, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert D(delta1) > D(delta0)


def test_projection_keeps_delta_within_eps(tok):
    task, b = _task_and_batch(tok, "sst", {})
    enc = Encode(_encoder())
    clean = task.outputs(task.embed(enc, b), b).detach()
    delta = smart.adversarial(task, enc, b, clean, {**PAPER, "steps": 2})
    assert delta.shape == (*b.inputs.input_ids.shape, CFG.hidden_size)
    assert float(delta.abs().max()) == pytest.approx(PAPER["eps"])  # a step of 1e-3 reaches the ball's surface


def test_symmetric_kl_and_squared_error():
    p, q = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    P, Q = p.softmax(-1), q.softmax(-1)
    ref = (P * (P / Q).log()).sum() + (Q * (Q / P).log()).sum()
    torch.testing.assert_close(smart.divergence("kl", p, q), ref[None])
    assert float(smart.divergence("kl", p, p)) == 0.0
    torch.testing.assert_close(smart.divergence("mse", torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0])),
                               torch.tensor([0.25, 0.0]))
    with pytest.raises(ValueError, match="smoothness must be one of"):
        smart.divergence("l1", p, q)


@pytest.mark.parametrize("unpad", [True, False])
def test_encoder_adds_delta_to_the_embedding_output(tok, unpad):
    """Through the hook, each sequence's output is the encoder layers run on its embedding output plus its
    delta; delta at padding changes nothing; packed input takes delta [T, hidden]; a wrong shape is refused."""
    torch.manual_seed(0)
    encoder = BertModel(CFG, backend="reference", unpad=unpad).eval()
    texts = ["a lovely film", "no one goes unindicted here", "ok"]
    padded = tok(texts)
    mask = padded.attention_mask.bool()
    delta = torch.randn(*padded.input_ids.shape, CFG.hidden_size) * 0.1
    with torch.no_grad():
        got = encoder(**padded.model_inputs(), embedding_delta=delta).last_hidden_state
        for i, n in enumerate(padded.lengths.tolist()):
            ids, types = padded.input_ids[i:i + 1, :n], padded.token_type_ids[i:i + 1, :n]
            x = encoder.embeddings(ids, types, torch.arange(n)[None]) + delta[i:i + 1, :n]
            ref = encoder.encoder(x, seqlens=torch.tensor([n], dtype=torch.int32))[0]
            torch.testing.assert_close(got[i, :n], ref, atol=1e-5, rtol=1e-5)
        at_padding = delta + torch.randn_like(delta) * (~mask)[..., None]
        torch.testing.assert_close(encoder(**padded.model_inputs(), embedding_delta=at_padding).last_hidden_state,
                                   got)
        assert not torch.allclose(encoder(**padded.model_inputs()).last_hidden_state, got)
        packed = tok(texts, packed=True)
        out = encoder(**packed.model_inputs(), embedding_delta=delta[mask]).last_hidden_state
        torch.testing.assert_close(out, got[mask], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="embedding_delta must have shape"):
        encoder(**padded.model_inputs(), embedding_delta=delta[:, :1])
