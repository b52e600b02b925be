"""The Triton launchers' candidate configs: triton.autotune over them on a GPU, the fixed config in the
interpreter, and every candidate compiled by aot_specs().

Without a GPU, autotune's timing cannot run; instead the GPU launch path runs here with the autotuner replaced
by one that launches a chosen candidate in the interpreter: each candidate's grid, blocks and partial sums
must give the fixed config's results.
"""
import functools

import pytest
import torch

pytest.importorskip("triton")
from fastbert.kernels import attention, bias_gelu, embedding, layer_norm, utils  # noqa: E402

MODULES = [attention, bias_gelu, embedding, layer_norm]


def _tuned(module):
    return [t for t in vars(module).values() if isinstance(t, utils.Tuned)]


class _Candidate:
    """Stands in for triton.autotune: launches candidate `index` of those it keeps for the call (the last one
    when fewer) in the interpreter, and records (the config it ran, the first candidate)."""

    def __init__(self, tuned, index, ran):
        self.tuned, self.index, self.ran = tuned, index, ran
        self.prune = tuned.autotuned.early_config_prune  # the real autotuner's

    def __getitem__(self, grid):
        assert callable(grid), "an autotuned launch takes grid(META)"
        return functools.partial(self.launch, grid)

    def launch(self, grid, *args, **kwargs):
        nargs = dict(zip(self.tuned.fn.arg_names, args))
        configs = self.prune(self.tuned.configs, nargs, **kwargs) if self.prune else self.tuned.configs
        config = configs[min(self.index, len(configs) - 1)]
        assert not kwargs.keys() & config.all_kwargs().keys(), "the launcher re-defines tuned parameters"
        self.ran.append((config, configs[0]))
        meta = config.all_kwargs()
        return self.tuned.fn[grid(meta)](*args, **kwargs, **meta)


def test_each_launch_goes_through_autotune_on_a_gpu_and_the_fixed_config_interpreted(monkeypatch):
    for module in MODULES:
        for tuned in _tuned(module):
            assert tuned.autotuned.fn is tuned.fn and tuned.autotuned.configs == tuned.configs
            assert tuned.kernel(interpret=False) is tuned.autotuned
            assert tuned.kernel(interpret=True) is tuned.fn
    ran = []
    for tuned in _tuned(bias_gelu):
        monkeypatch.setattr(tuned, "autotuned", _Candidate(tuned, 0, ran))
    x, b = torch.randn(5, 300), torch.randn(300)
    bias_gelu.bias_gelu_forward(x, b, "none")
    assert not ran  # interpreted: the bare kernel with the fixed config
    monkeypatch.setattr(utils, "interpreted", lambda: False)
    bias_gelu.bias_gelu_forward(x, b, "none")
    assert ran == [(bias_gelu.FIXED, bias_gelu.FIXED)]


def _layer_norm(x, w, b, r, ib, dy):
    out, h, mean, rstd = layer_norm.layer_norm_forward(x, w, b, r, ib, 1e-5, 0.1, 7, None)
    return (out, h, mean, rstd, *layer_norm.layer_norm_backward(dy, h, w, mean, rstd, 0.1, 7, None, True))


def _embedding(ids, types, pos, word, type_t, pos_t, w, b, dy):
    out, mean, rstd = embedding.embedding_layer_norm_forward(ids, types, pos, word, type_t, pos_t, w, b, 1e-5, 0.1, 7,
                                                             None)
    grads = embedding.embedding_layer_norm_backward(dy, ids, types, pos, word, type_t, pos_t, w, mean, rstd, 0.1, 7,
                                                    None, 0)
    return (out, mean, rstd, *grads)


def _bias_gelu(x, b, dy):
    return (bias_gelu.bias_gelu_forward(x, b, "tanh"), *bias_gelu.bias_gelu_backward(dy, x, b, "tanh"))


def _attention(q, k, v, seqlens, dy):
    out, lse = attention.attention_forward(q, k, v, seqlens, 0.3, 0.1, 7, None)
    return (out, lse, *attention.attention_backward(dy, q, k, v, out, lse, seqlens, 0.3, 0.1, 7, None))


def _cases():
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    M, N = 37, 520  # BLOCK_N 1024; N % 8 == 0: grouped dropout bits
    ids = torch.randint(0, 11, (M,), generator=g)
    return [
        (layer_norm, _layer_norm, (rand(M, N), rand(N), rand(N), rand(M, N), rand(N), rand(M, N))),
        (embedding, _embedding, (ids, ids % 2, torch.arange(M) % 13, rand(11, N), rand(2, N), rand(13, N), rand(N),
                                 rand(N), rand(M, N))),
        (bias_gelu, _bias_gelu, (rand(37, 600), rand(600), rand(37, 600))),
        (attention, _attention, (*(rand(2, 70, 2, 32).half() for _ in range(3)),  # fp16: more candidates than fp32
                                 torch.tensor([70, 23], dtype=torch.int32), rand(2, 70, 2, 32).half())),
    ]


# (case, candidate index): each index up to the most candidates a kernel of the case has
COUNTS = [len(utils.row_candidates(520, False)), len(utils.row_candidates(520, False)), len(bias_gelu.FWD_CONFIGS),
          len(attention._candidates(32, torch.float16, True)["fwd"])]


@pytest.mark.parametrize("case, index", [(case, i) for case, count in enumerate(COUNTS) for i in range(1, count)],
                         ids=lambda v: str(v))
def test_every_candidate_computes_what_the_fixed_config_does(monkeypatch, case, index):
    module, run, inputs = _cases()[case]
    expected = run(*inputs)
    ran = []
    for tuned in _tuned(module):
        monkeypatch.setattr(tuned, "autotuned", _Candidate(tuned, index, ran))
    monkeypatch.setattr(utils, "interpreted", lambda: False)  # the launchers' GPU path
    actual = run(*inputs)
    assert ran and any(config is not first for config, first in ran)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 if a.dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("backward", [False, True])
def test_row_kernels_start_from_the_fixed_config_and_backward_keeps_its_rows(backward):
    for block in utils.ROW_BLOCKS:
        for n in (block - 3, block):
            candidates = utils.row_prune(utils.row_configs(backward), {"N": n})
            assert candidates == utils.row_candidates(n, backward) and len(candidates) >= 1
            fixed = utils.fixed_row_config(n, True, backward, utils.GPU_TILE)[1]
            assert candidates[0].all_kwargs() == fixed.all_kwargs()
            if backward:  # the launcher sizes rows_per_program and the partial sums from the fixed ROWS
                assert {c.kwargs["ROWS"] for c in candidates} == {fixed.kwargs["ROWS"]}
    assert len(utils.row_candidates(512, backward)) > 1


def test_attention_and_bias_gelu_start_from_the_fixed_config():
    for head_dim in attention.HEAD_DIMS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for dropout in (False, True):
                fixed = attention._configs(head_dim, dtype, dropout)
                for kind, candidates in attention._candidates(head_dim, dtype, dropout).items():
                    c = candidates[0]
                    assert (c.kwargs["BLOCK_M"], c.kwargs.get("BLOCK_N", 0), c.num_warps, c.num_stages) == fixed[kind]
                assert len(attention._candidates(head_dim, dtype, dropout)["fwd"]) > 1
    assert bias_gelu.FWD_CONFIGS[0] is bias_gelu.FIXED and bias_gelu.BWD_CONFIGS[0] is bias_gelu.FIXED
    # the backward launcher sizes its grid and partial sums from the fixed blocks
    assert {tuple(c.kwargs.items()) for c in bias_gelu.BWD_CONFIGS} == {tuple(bias_gelu.FIXED.kwargs.items())}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_aot_specs_compile_every_candidate(module):
    specs = module.aot_specs()
    for tuned in _tuned(module):
        for c in tuned.configs:
            assert any(s["fn"] is tuned.fn and c.kwargs.items() <= s["constexprs"].items()
                       and (s["num_warps"], s["num_stages"], s.get("maxnreg")) == (c.num_warps, c.num_stages, c.maxnreg)
                       for s in specs), f"{tuned.fn.__name__}: {c} has no aot spec"
