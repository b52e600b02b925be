"""FusedAdam / FusedAdamW against torch.optim.Adam / AdamW: parameters and states, state_dict interchange,
resumption, fused clipping against clip_grad_norm_, mixed precision, and bad input. The tests taking the
`device` fixture run on CPU (the C++ kernel) and on CUDA (csrc/cuda/adam.cu, against torch.optim on CUDA
tensors); the CUDA cases skip without a GPU and fail on a GPU where fastbert._C_cuda was not built."""
import copy
import io

import pytest
import torch

from fastbert import _extension, use_backend
from fastbert.optim import FusedAdam, FusedAdamW
from fastbert.optim.adam import _implementation, l2_norm_reference
from tests._tolerance import max_rel_err

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA FusedAdam kernel needs a CUDA GPU")])])
def device(request) -> torch.device:
    return torch.device(request.param)


def make_params(kind: str) -> list[torch.Tensor]:
    if kind == "odd":  # odd sizes, an empty tensor, a scalar (chunk boundaries: test_tensors_across_chunks)
        return [torch.randn(7, 13), torch.randn(1000), torch.randn(0), torch.randn(()), torch.randn(3, 5, 7)]
    # strided parameters: dense but transposed, and not dense at all (updated through temporaries)
    return [torch.randn(13, 7).t(), torch.randn(10, 8)[:, ::2], torch.randn(3, 5, 7), torch.randn(1)]


def make_grad(p: torch.Tensor, i: int, dtype=None, device="cpu") -> torch.Tensor:
    """Every other gradient is a non-contiguous view."""
    dtype = dtype or p.dtype
    if i % 2:
        return torch.randn(*p.shape, 2, dtype=dtype, device=device)[..., 0]
    return torch.randn(p.shape, dtype=dtype, device=device)


def leaves(params, dtype=None, device="cpu"):
    """Leaf copies with the same strides (clone() would make the non-dense one contiguous)."""
    return [torch.empty_strided(p.shape, p.stride(), dtype=dtype or p.dtype, device=device).copy_(p).requires_grad_()
            for p in params]


def groups(params, weight_decay):
    """Two param groups with different hyperparameters."""
    second = {"params": params[1::2], "lr": 3e-3}
    if weight_decay:
        second["weight_decay"] = weight_decay / 2
    return [{"params": params[0::2]}, second]


def run(opt, sched, params, grads_of_step, steps):
    for step in range(steps):
        for p, g in zip(params, grads_of_step(step)):
            p.grad = g
        opt.step()
        sched.step()


def assert_same(params, opt, ref_params, ref_opt, tol=1e-6):
    for p, r in zip(params, ref_params):
        assert p.shape == r.shape
        if r.numel():
            assert max_rel_err(p.detach(), r.detach()) <= tol
        state, ref_state = opt.state[p], ref_opt.state[r]
        assert float(state["step"]) == float(ref_state["step"])
        for key in STATE_KEYS:
            assert (key in state) == (key in ref_state)
            if key in state and r.numel():
                assert max_rel_err(state[key], ref_state[key]) <= tol, key


CONFIGS = {  # name: (ours, torch's, kwargs)
    "adam": (FusedAdam, torch.optim.Adam, {}),
    "amsgrad": (FusedAdam, torch.optim.Adam, {"amsgrad": True}),
    # 1 - beta1 >= 0.5 takes torch's other lerp formula
    "maximize_low_beta1": (FusedAdam, torch.optim.Adam, {"maximize": True, "betas": (0.3, 0.9)}),
    "l2_weight_decay": (FusedAdam, torch.optim.Adam, {"weight_decay": 0.1}),
    "adamw": (FusedAdamW, torch.optim.AdamW, {"weight_decay": 0.1}),
    "adamw_amsgrad_maximize": (FusedAdamW, torch.optim.AdamW, {"weight_decay": 0.05, "amsgrad": True,
                                                                "maximize": True, "eps": 1e-6}),
    "adam_decoupled": (FusedAdam, torch.optim.Adam, {"weight_decay": 0.1, "decoupled_weight_decay": True}),
}


def test_kernel_path_is_used(device):
    assert _implementation(device) == "kernel", _extension.status()


@pytest.mark.parametrize("config,kind", [(c, "odd") for c in CONFIGS] + [("adam", "strided"),
                                                                         ("adamw_amsgrad_maximize", "strided")])
def test_matches_torch_for_200_steps(config, kind, device):
    ours_cls, torch_cls, kwargs = CONFIGS[config]
    init = make_params(kind)
    ours, ref = leaves(init, device=device), leaves(init, device=device)
    wd = kwargs.get("weight_decay", 0)
    opt, ref_opt = ours_cls(groups(ours, wd), lr=1e-2, **kwargs), torch_cls(groups(ref, wd), lr=1e-2, **kwargs)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=50, gamma=0.5) for o in (opt, ref_opt)]
    grads = {}  # the same gradient tensors for both
    grads_of_step = lambda step: grads.setdefault(step, [make_grad(p, i, device=device)  # noqa: E731
                                                          for i, p in enumerate(init)])
    run(opt, scheds[0], ours, grads_of_step, 200)
    run(ref_opt, scheds[1], ref, grads_of_step, 200)
    assert_same(ours, opt, ref, ref_opt)


def test_tensors_across_chunks():
    """Tensors over several 65536-element OpenMP chunks, next to small ones (fewer steps: these are big)."""
    init = [torch.randn(2 * 65536 + 3), torch.randn(5), torch.randn(256, 257)]
    ours, ref = leaves(init), leaves(init)
    opt, ref_opt = FusedAdam(ours, lr=1e-2, amsgrad=True), torch.optim.Adam(ref, lr=1e-2, amsgrad=True)
    for _ in range(10):
        for i, (p, r) in enumerate(zip(ours, ref)):
            p.grad = make_grad(p, i)
            r.grad = p.grad
        opt.step()
        ref_opt.step()
    assert_same(ours, opt, ref, ref_opt)


def test_state_dict_has_torchs_keys_and_shapes():
    init = make_params("odd")
    ours, ref = leaves(init), leaves(init)
    opt, ref_opt = FusedAdam(ours, amsgrad=True), torch.optim.Adam(ref, amsgrad=True)
    for params, o in ((ours, opt), (ref, ref_opt)):
        for i, p in enumerate(params):
            p.grad = make_grad(p, i)
        o.step()
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert sd["state"].keys() == ref_sd["state"].keys()
    for i, state in sd["state"].items():
        ref_state = ref_sd["state"][i]
        assert state.keys() == ref_state.keys()
        for key, value in state.items():
            assert (value.shape, value.dtype, value.device) == (ref_state[key].shape, ref_state[key].dtype,
                                                               ref_state[key].device), key
    assert set(sd["param_groups"][0]) <= set(ref_sd["param_groups"][0])


def save_load(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("first,second", [(torch.optim.AdamW, FusedAdamW), (FusedAdamW, torch.optim.AdamW)])
def test_switching_optimizers_mid_training(first, second, device):
    """50 steps with one, the state_dict into the other, 50 more: as 100 steps with torch alone."""
    init = make_params("odd")
    switched, ref = leaves(init, device=device), leaves(init, device=device)
    grads = [[make_grad(p, i, device=device) for i, p in enumerate(init)] for _ in range(100)]
    kwargs = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    ref_opt = torch.optim.AdamW(ref, **kwargs)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=30, gamma=0.5)
    run(ref_opt, ref_sched, ref, lambda step: grads[step], 100)
    opt = first(switched, **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)
    run(opt, sched, switched, lambda step: grads[step], 50)
    opt2 = second(switched, **kwargs)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=30, gamma=0.5)
    sched2.load_state_dict(save_load(sched.state_dict()))
    opt2.load_state_dict(save_load(opt.state_dict()))
    run(opt2, sched2, switched, lambda step: grads[50 + step], 50)
    assert_same(switched, opt2, ref, ref_opt)


def test_resumed_run_continues_identically():
    """Save at step 30 (bf16 params with fp32 masters, clipping on), resume elsewhere: bit for bit the same."""
    init = make_params("odd") + [torch.randn(5, 3)]
    dtypes = [torch.float32] * 5 + [torch.bfloat16]
    grads = [[make_grad(p, i, dt) for i, (p, dt) in enumerate(zip(init, dtypes))] for _ in range(60)]

    def new_run(params):
        opt = FusedAdamW(params, lr=1e-2, max_grad_norm=5.0)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)

    params = [p.to(dt).requires_grad_() for p, dt in zip(init, dtypes)]
    opt, sched = new_run(params)
    run(opt, sched, params, lambda step: grads[step], 30)
    saved = save_load({"params": [p.detach() for p in params], "opt": opt.state_dict(), "sched": sched.state_dict()})
    run(opt, sched, params, lambda step: grads[30 + step], 30)

    resumed = [p.clone().requires_grad_() for p in saved["params"]]
    opt2, sched2 = new_run(resumed)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.state[resumed[-1]]["exp_avg"].dtype == torch.float32  # not cast to the bf16 param's dtype
    run(opt2, sched2, resumed, lambda step: grads[30 + step], 30)
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][key]), key
    assert copy.deepcopy(opt2).max_grad_norm == 5.0


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])  # clipping on every step, never
def test_clipping_equals_clip_grad_norm_then_step(max_norm, backend, device):
    init = make_params("odd")
    ours, ref = leaves(init, device=device), leaves(init, device=device)
    opt = FusedAdamW(ours, lr=1e-2, max_grad_norm=max_norm, maximize=True)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, maximize=True)
    with use_backend(backend):
        for _ in range(200):
            grads = [make_grad(p, i, device=device) for i, p in enumerate(init)]
            for p, r, g in zip(ours, ref, grads):
                p.grad, r.grad = g, g.clone()
            norm = opt.step()
            ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
            ref_opt.step()
            assert norm.dtype == torch.float32 and opt.grad_norm is norm
            exact = torch.stack([g.double().norm() for g in grads]).norm()
            torch.testing.assert_close(norm.double(), exact, rtol=1e-6, atol=0)
            torch.testing.assert_close(norm, ref_norm, rtol=1e-5, atol=0)  # torch's fp32 norm is off by ~1e-6
            assert all(p.grad is g for p, g in zip(ours, grads))  # gradients are left as they were
    # The clip coefficient follows the norm's last bits, and torch's fp32 norm has ~1e-6 of error (it even
    # changes with the gradients' memory layout): over 200 steps that moves a scalar parameter by ~1e-6.
    assert_same(ours, opt, ref, ref_opt, tol=1e-5)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_norm_skips_the_step(bad, device):
    params = leaves(make_params("odd"), device=device)
    opt = FusedAdam(params, lr=1e-2, max_grad_norm=1.0)
    for i, p in enumerate(params):
        p.grad = make_grad(p, i, device=device)
    opt.step()
    before = copy.deepcopy((params, opt.state_dict()))
    params[0].grad = params[0].grad.clone()
    params[0].grad[3, 4] = bad
    norm = opt.step()
    assert not torch.isfinite(norm) and opt.grad_norm is norm
    after = (params, opt.state_dict())
    for p, q in zip(before[0], after[0]):
        assert torch.equal(p, q)
    for i, state in before[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, after[1]["state"][i][key]), key


def test_nonfinite_norm_applied_like_torch_when_not_skipping():
    init = make_params("odd")[:2]
    ours, ref = leaves(init), leaves(init)
    opt = FusedAdam(ours, lr=1e-2, max_grad_norm=1.0, skip_nonfinite=False)
    ref_opt = torch.optim.Adam(ref, lr=1e-2)
    grads = [make_grad(p, i) for i, p in enumerate(init)]
    grads[1][7] = float("inf")
    for p, r, g in zip(ours, ref, grads):
        p.grad, r.grad = g, g.clone()
    opt.step()
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    ref_opt.step()
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p, r, equal_nan=True, rtol=1e-6, atol=0)
    assert ours[1].isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_weights_follow_fp32_adam(dtype, device):
    init = make_params("odd")
    ours, ref = leaves(init, dtype, device), leaves(init, dtype, device)
    ref = [r.float().detach().requires_grad_() for r in ref]  # fp32 Adam from the same (rounded) start
    opt = FusedAdamW(ours, lr=1e-2, amsgrad=True, max_grad_norm=1e3)  # the norm, no clipping (a test of its own)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, amsgrad=True)
    for _ in range(100):
        grads = [make_grad(p, i, dtype, device) for i, p in enumerate(init)]
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g, g.float()
        norm = opt.step()
        torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(ref, 1e3), rtol=1e-5, atol=0)
        ref_opt.step()
    for p, r in zip(ours, ref):
        state = opt.state[p]
        assert p.dtype == dtype and all(state[k].dtype == torch.float32 for k in (*STATE_KEYS, "master_param"))
        assert torch.equal(p, state["master_param"].to(dtype))
        if r.numel():
            assert max_rel_err(state["master_param"], r.detach()) <= 1e-6
            for key in STATE_KEYS:
                assert max_rel_err(state[key], ref_opt.state[r][key]) <= 1e-6, key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_params_keep_exact_fp32_masters(dtype):
    """cast_params: fp32 parameters stored in dtype, their exact fp32 values as masters; the steps then follow
    fp32 AdamW from the UNROUNDED start (bf16-weights training), and a state_dict round trip resumes exactly."""
    init = make_params("odd")
    ours, ref = leaves(init), leaves(init)
    opt = FusedAdamW(ours, lr=1e-2, max_grad_norm=1e3)
    opt.cast_params(dtype, ours[:3])
    assert [p.dtype for p in ours] == [dtype] * 3 + [torch.float32] * 2
    for p, r in zip(ours[:3], ref):
        assert torch.equal(opt.state[p]["master_param"], r.detach())  # not the rounded value
    ref_opt = torch.optim.AdamW(ref, lr=1e-2)
    for step in range(30):
        grads = [make_grad(p, i) for i, p in enumerate(init)]
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.to(p.dtype), g.to(p.dtype).float()
        opt.step()
        ref_opt.step()
        if step == 14:  # save and resume into a fresh optimizer over freshly cast parameters
            saved = copy.deepcopy(opt.state_dict())
            fresh = leaves([opt.state[p]["master_param"] if p in opt.state and "master_param" in opt.state[p]
                            else p.detach() for p in ours])
            fresh_opt = FusedAdamW(fresh, lr=1e-2, max_grad_norm=1e3)
            fresh_opt.cast_params(dtype, fresh[:3])
            fresh_opt.load_state_dict(saved)
            assert all(torch.equal(a, b) for a, b in zip(fresh, ours))
            ours, opt = fresh, fresh_opt
    for p, r in zip(ours, ref):
        master = opt.state[p].get("master_param", p.detach())
        assert torch.equal(p, master.to(p.dtype))
        if r.numel():
            assert max_rel_err(master, r.detach()) <= 1e-6


def test_cast_params_bad_input():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="master_weights=True and bf16/fp16"):
        FusedAdamW([p], master_weights=False).cast_params(torch.bfloat16)
    with pytest.raises(ValueError, match="not in this optimizer"):
        FusedAdamW([p]).cast_params(torch.bfloat16, [torch.randn(2, requires_grad=True)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_states_without_master(dtype):
    """States in the param's dtype, math in fp32: closer to fp32 Adam than torch's Adam in that dtype, and the
    same as the reference path."""
    init = make_params("odd")
    ours, on_ref_path, torch_low, exact = leaves(init, dtype), leaves(init, dtype), leaves(init, dtype), leaves(init)
    exact = [e.to(dtype).float().detach().requires_grad_() for e in exact]
    opts = [FusedAdam(ours, lr=1e-2, master_weights=False), FusedAdam(on_ref_path, lr=1e-2, master_weights=False),
            torch.optim.Adam(torch_low, lr=1e-2), torch.optim.Adam(exact, lr=1e-2)]
    for _ in range(20):
        grads = [make_grad(p, i, dtype) for i, p in enumerate(init)]
        for params in (ours, on_ref_path, torch_low, exact):
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
        opts[0].step()
        with use_backend("reference"):
            opts[1].step()
        opts[2].step()
        opts[3].step()
    tol = {torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    for p, q, t, e in zip(ours, on_ref_path, torch_low, exact):
        assert opts[0].state[p]["exp_avg"].dtype == dtype and "master_param" not in opts[0].state[p]
        if p.numel():
            p, q, t, e = p.detach(), q.detach(), t.detach(), e.detach()
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)
            assert max_rel_err(p, e) <= max(max_rel_err(t, e), torch.finfo(dtype).eps)


def test_params_without_grad_are_skipped():
    params = leaves([torch.randn(4), torch.randn(3), torch.randn(2)])
    opt = FusedAdam(params, lr=0.1)
    params[0].grad, params[2].grad = torch.randn(4), torch.randn(2)
    before = params[1].detach().clone()
    opt.step()
    assert torch.equal(params[1], before) and params[1] not in opt.state
    assert float(opt.state[params[2]]["step"]) == 1.0


def test_multi_tensor_l2_norm_matches_torch(device):
    new = lambda *shape, dtype=torch.float32: torch.randn(shape, dtype=dtype, device=device)  # noqa: E731
    tensors = [new(3 * 65536 + 5), new(40, 30).t(), new(10, 8)[:, ::2], new(0), new(), new(777, dtype=torch.bfloat16),
               3 * new(55, dtype=torch.float16)]
    norm = torch.ops.fastbert_C.multi_tensor_l2_norm(tensors)
    torch.testing.assert_close(norm.double(), torch.stack([t.double().norm() for t in tensors]).norm(), rtol=1e-6,
                               atol=0)
    torch.testing.assert_close(norm, l2_norm_reference(tensors), rtol=1e-5, atol=0)


def test_bad_input_is_a_clear_error():
    p = torch.randn(5, requires_grad=True)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.tensor([1.0, 2.0]), (5,), check_invariants=True)
    with pytest.raises(RuntimeError, match="sparse"):
        FusedAdam([p]).step()
    c = torch.randn(5, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.randn(5, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        FusedAdam([c]).step()
    d = torch.randn(5, dtype=torch.float64, requires_grad=True)
    d.grad = torch.randn(5, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        FusedAdam([d]).step()
    q, m = torch.randn(5, requires_grad=True), torch.empty(5, device="meta", requires_grad=True)
    q.grad, m.grad = torch.randn(5), torch.empty(5, device="meta")
    with pytest.raises(ValueError, match="mixed devices"):
        FusedAdam([q, m]).step()
    for kwargs, what in [({"lr": -1.0}, "learning rate"), ({"betas": (1.0, 0.9)}, "beta"),
                         ({"max_grad_norm": 0.0}, "max_grad_norm"), ({"weight_decay": -0.1}, "weight_decay")]:
        with pytest.raises(ValueError, match=what):
            FusedAdam([q], **kwargs)


@pytest.mark.skipif(_extension.cuda() is not None, reason="this install has the CUDA extension")
def test_cuda_parameters_need_the_cuda_build():
    with pytest.raises(RuntimeError, match="CUDA extension"):
        _implementation(torch.device("cuda", 0))


def test_op_checks_all_tensors_before_counting_steps():
    p, g, step = torch.randn(6), torch.randn(6), torch.tensor(3.0)
    with pytest.raises(RuntimeError, match="exp_avg_sq.*does not match"):
        torch.ops.fastbert_C.adam_step([p, p], [g, g], [torch.zeros(6)] * 2,
                                       [torch.zeros(6), torch.zeros(6, dtype=torch.bfloat16)], [], [],
                                       [step, step.clone()], 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, None)
    assert float(step) == 3.0
