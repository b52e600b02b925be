"""Parity: how far fastbert's outputs, gradients and loss curves are from the reference and Hugging Face.

Errors are measured against an fp32 ground truth (Hugging Face's BertModel for the model, fastbert's
reference backend for the ops) and set beside the error that the baseline itself makes in the same dtype:
fastbert passes where its error is at most 2x the baseline's, or under the dtype's tolerance.
Convergence (as Liger-Kernel's): 200 training steps on real SST / Quora / STS batches, dropout on (fastbert
and the reference draw the same dropout masks), fastbert's loss curve against the reference backend's:
fp32 against fp32; the fast path (bf16 weights, fp32 masters) and fastbert under bf16 autocast against the
reference backend under bf16 autocast (fp32 weights, torch's AdamW).
"""
import importlib

import pytest
import torch

from bench.workload import NO_BF16, QUICK, Runner, hf_model, model_config, model_weights, real_batches, skips_bf16
from fastbert import BertModel, backend, ops, use_backend
from fastbert.pretrained import to_fastbert

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-2}  # relative error an op may always have
MODEL_TOL = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2}  # ... and a whole model (6 layers, 18 ops each)


def _dtype(name, device):
    if name == "fp16" and device.type != "cuda":
        pytest.skip("fp16 is a CUDA dtype here (CPU training runs bf16)")
    return DTYPES[name]


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max |expected|)."""
    diff = float((actual.float() - expected.float()).abs().max()) if actual.numel() else 0.0
    return diff, diff / max(float(expected.float().abs().max()) if expected.numel() else 0.0, 1e-30)


def _worst(pairs) -> dict:
    """The largest abs and rel error over several tensors (e.g. every parameter's gradient)."""
    errs = [errors(a, e) for a, e in pairs]
    return {"abs": max(e[0] for e in errs), "rel": max(e[1] for e in errs)}


# -- whole model ---------------------------------------------------------------------------------------

def _model_run(model, batch, amp, device, w):
    """Forward + backward of sum(last_hidden_state * w) + sum(pooler_output) over the real tokens."""
    model.zero_grad(set_to_none=True)
    p, real = batch.padded, batch.padded.attention_mask.bool()
    with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
        if isinstance(model, BertModel):
            out = model(**batch.packed.model_inputs())
            hidden = out.last_hidden_state
        else:
            out = model(input_ids=p.input_ids, attention_mask=p.attention_mask, token_type_ids=p.token_type_ids)
            hidden = out.last_hidden_state[real]
    ((hidden.float() * w).sum() + out.pooler_output.float().sum()).backward()
    grads = {n: q.grad for n, q in model.named_parameters()}
    grads = grads if isinstance(model, BertModel) else to_fastbert(grads)  # HF names -> fused qkv
    return hidden.detach().float(), out.pooler_output.detach().float(), grads


def _model_errors(run, truth) -> dict:
    return {"hidden": _worst([(run[0], truth[0])]), "pooler": _worst([(run[1], truth[1])]),
            "grads": _worst([(run[2][n], truth[2][n]) for n in truth[2]])}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_model_parity(benchmark, dtype, device, tasks, tokenizer):
    """fastbert (backend auto) and its reference backend against Hugging Face's BertModel in fp32."""
    amp = _dtype(dtype, device)
    _skip_slow_bf16(dtype, device)
    config = model_config("minilm")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    weights = model_weights("minilm")
    batch = real_batches(tasks, tokenizer, 2, 4 if QUICK else 16, seed=3)[1].to(device)  # Quora pairs
    models = {}
    for name, backend in (("fastbert", "auto"), ("reference", "reference")):
        models[name] = BertModel(config, backend=backend).to(device)
        models[name].load_state_dict(weights)
    models["hf"] = hf_model(config, weights).to(device)
    w = torch.randn(batch.tokens, config.hidden_size, device=device)
    truth = _model_run(models["hf"], batch, torch.float32, device, w)
    runs = {name: _model_run(m, batch, amp, device, w) for name, m in models.items() if name != "fastbert"}
    benchmark.group = "parity: model"
    runs["fastbert"] = benchmark.pedantic(_model_run, (models["fastbert"], batch, amp, device, w), rounds=1)

    errs = {name: _model_errors(run, truth) for name, run in runs.items()}
    errs["fastbert_vs_reference"] = _model_errors(runs["fastbert"], runs["reference"])
    benchmark.extra_info.update(kind="model_parity", dtype=dtype, shape="minilm", truth="hf-fp32",
                                sequences=len(batch.labels), tokens=batch.tokens, errors=errs)
    for part in ("hidden", "pooler", "grads"):
        ours, base = errs["fastbert"][part]["rel"], max(errs["hf"][part]["rel"], errs["reference"][part]["rel"])
        bound = max(2 * base, MODEL_TOL[dtype])
        assert ours <= bound, f"{dtype} {part}: fastbert rel error {ours:.2e} > {bound:.2e} (baselines {base:.2e})"


# -- each op -------------------------------------------------------------------------------------------

def _op_inputs(op, device, lengths, heads=12, head_dim=32):
    """fp32 master inputs for one op at BERT shapes: packed tokens of real sentence lengths."""
    T, N = sum(lengths), heads * head_dim
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    if OPS[op][0] == "layer_norm":
        return [rnd(T, N), 1 + 0.1 * rnd(N), 0.1 * rnd(N), rnd(T, N), 0.1 * rnd(N)]
    if OPS[op][0] == "bias_gelu":
        return [rnd(T, 4 * N), 0.1 * rnd(4 * N)]
    return [rnd(T, heads, head_dim) for _ in range(3)]


def _op_call(op, lengths, device):
    """The public op as a function of its tensor inputs; dropout reseeded per call: the same masks."""
    module, _, dropout, approximate = OPS[op]
    cu = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    gen = torch.Generator()  # fastbert draws dropout seeds on the CPU
    if module == "layer_norm":
        return lambda x, w, b, r, ib: ops.layer_norm(x, w, b, 1e-12, residual=r, input_bias=ib, dropout_p=dropout,
                                                     generator=gen.manual_seed(7))
    if module == "bias_gelu":
        return lambda x, b: ops.bias_gelu(x, b, approximate)
    return lambda q, k, v: ops.attention_varlen(q, k, v, cu, max(lengths), dropout_p=dropout,
                                                generator=gen.manual_seed(7))


def _op_run(fn, inputs, dtype, grad_out):
    xs = [x.detach().to(dtype).requires_grad_() for x in inputs]
    out = fn(*xs)
    out.backward(grad_out.to(dtype))
    return out.detach().float(), [x.grad.float() for x in xs]


def _op_errors(run, truth) -> dict:
    return {"out": _worst([(run[0], truth[0])]), "grads": _worst(zip(run[1], truth[1]))}


# name -> (fastbert.ops module, the op name the backend resolves, dropout_p, gelu approximation)
OPS = {"layer_norm": ("layer_norm", "layer_norm", 0.0, None),
       "layer_norm_dropout": ("layer_norm", "layer_norm", 0.1, None),
       "bias_gelu": ("bias_gelu", "bias_gelu", 0.0, "none"),
       "bias_gelu_tanh": ("bias_gelu", "bias_gelu", 0.0, "tanh"),
       "attention_varlen": ("attention", "attention_varlen", 0.0, None),
       "attention_varlen_dropout": ("attention", "attention_varlen", 0.1, None)}
OP_PARITY = [(op, dt) for op in OPS for dt in ("fp32", "bf16", "fp16")]


@pytest.mark.parametrize("op,dtype", OP_PARITY, ids=[f"{o}-{d}" for o, d in OP_PARITY])
def test_op_parity(benchmark, op, dtype, device):
    """Each fused op (backend auto: the kernels where they exist) against its fp32 reference."""
    dt = _dtype(dtype, device)
    module, name = OPS[op][:2]
    lengths = [5, 1, 17, 9] if QUICK else [31, 1, 12, 57, 23, 9, 40, 17]  # SST-like lengths, one of 1
    inputs, fn = _op_inputs(op, device, lengths), _op_call(op, lengths, device)
    with use_backend("reference"):
        grad_out = torch.randn_like(fn(*inputs))
        truth = _op_run(fn, inputs, torch.float32, grad_out)
        ref = _op_run(fn, inputs, dt, grad_out)
    benchmark.group = "parity: ops"
    with use_backend("auto"):
        ours = benchmark.pedantic(_op_run, (fn, inputs, dt, grad_out), rounds=1)
        impl = backend.resolve(name, device, importlib.import_module(f"fastbert.ops.{module}").KERNELS)
    errs = {"fastbert": _op_errors(ours, truth), "reference": _op_errors(ref, truth),
            "fastbert_vs_reference": _op_errors(ours, ref)}
    benchmark.extra_info.update(kind="op_parity", op=op, dtype=dtype, backend=impl, tokens=sum(lengths),
                                truth="reference-fp32", errors=errs)
    for part in ("out", "grads"):
        mine, base = errs["fastbert"][part]["rel"], errs["reference"][part]["rel"]
        bound = max(2 * base, TOL[dtype])
        assert mine <= bound, f"{op} {dtype} {part}: rel error {mine:.2e} > {bound:.2e} (reference {base:.2e})"


# -- convergence ---------------------------------------------------------------------------------------

# per-step |loss - reference loss| <= atol + rtol * |reference loss|; and the relative difference of the
# whole weight update (final - initial weights) between fastbert and the reference
CONVERGENCE_TOL = {"fp32": dict(atol=1e-3, rtol=1e-3, update=1e-2),
                   "bf16": dict(atol=5e-2, rtol=5e-2, update=0.5),
                   "bf16-autocast": dict(atol=5e-2, rtol=5e-2, update=0.5)}
CONVERGENCE = {"fp32": ("fastbert-fp32", "reference-fp32"), "bf16": ("fastbert", "reference-bf16"),
               "bf16-autocast": ("fastbert-bf16-autocast", "reference-bf16")}


def _skip_slow_bf16(dtype: str, device) -> None:
    """A timed run on a device without bf16 matmuls leaves the bf16 model runs out (a reference loop: hours)."""
    if dtype != "fp32" and skips_bf16(device):
        pytest.skip(NO_BF16)


def _train(variant, device, weights, batches, precision=None):
    r = Runner(variant, "minilm", device, weights=weights, precision=precision)
    torch.manual_seed(1234)  # the dropout seeds: the same sequence for both runs
    start = [w.clone().float() for w in r.weights()]
    losses = [float(r.train_step(b)) for b in batches]
    update = [w.float() - s for w, s in zip(r.weights(), start)]  # fp32 masters where there are some
    return losses, update


@pytest.mark.parametrize("dtype", list(CONVERGENCE))
def test_convergence(benchmark, dtype, device, tasks, tokenizer):
    """fastbert and the reference train all-MiniLM-L6-v2 on the same real batches: the same loss curve."""
    steps, batch = (20, 4) if QUICK else (200, 8)
    weights = model_weights("minilm")
    batches = [b.to(device) for b in real_batches(tasks, tokenizer, steps, batch, seed=4)]
    ours_name, ref_name = CONVERGENCE[dtype]
    _skip_slow_bf16(dtype, device)
    ref, ref_update = _train(ref_name, device, weights, batches)
    benchmark.group = "parity: convergence"
    ours, ours_update = benchmark.pedantic(_train, (ours_name, device, weights, batches, dtype), rounds=1)

    tol = CONVERGENCE_TOL[dtype]
    worst = max(abs(a - b) - tol["rtol"] * abs(b) for a, b in zip(ours, ref))
    num = sum(float((a - b).float().pow(2).sum()) for a, b in zip(ours_update, ref_update))
    den = sum(float(b.float().pow(2).sum()) for b in ref_update)
    update_diff = (num / max(den, 1e-30)) ** 0.5
    quarter = max(1, steps // 4)
    benchmark.extra_info.update(
        kind="convergence", dtype=dtype, shape="minilm", steps=steps, sequences_per_step=batch,
        variants={"fastbert": ours_name, "reference": ref_name}, tolerance=tol,
        losses={"fastbert": ours, "reference": ref}, max_abs_loss_diff=max(abs(a - b) for a, b in zip(ours, ref)),
        update_rel_diff=update_diff, first_quarter_loss=sum(ours[:quarter]) / quarter,
        last_quarter_loss=sum(ours[-quarter:]) / quarter)
    assert all(x == x and abs(x) < 1e4 for x in ours), "fastbert's loss is not finite"
    assert worst <= tol["atol"], f"{dtype}: a step's loss differs from the reference by more than {tol}"
    assert update_diff <= tol["update"], f"{dtype}: weight updates differ by {update_diff:.2e} (relative)"
    assert QUICK or sum(ours[-quarter:]) < sum(ours[:quarter]), "the loss did not go down"
