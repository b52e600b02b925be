"""FusedAdam / FusedAdamW: torch.optim.Adam / AdamW in one fused pass over all parameters.

Same hyperparameters, param groups, lr schedulers and state_dict as torch's (state keys "step",
"exp_avg", "exp_avg_sq", "max_exp_avg_sq" with the parameters' shapes), so a run can switch between
them mid-training. On top:
  max_grad_norm    global-norm gradient clipping inside the step, equal to
                   torch.nn.utils.clip_grad_norm_(params, max_grad_norm) followed by the step, without
                   modifying .grad; step() returns the norm (also kept as .grad_norm).
  skip_nonfinite   with clipping, a step whose gradient norm is inf/NaN changes nothing (no weights,
                   states or step counts) and returns that norm; on CUDA this costs one device sync.
  master_weights   bf16/fp16 parameters get an fp32 master copy ("master_param") and fp32 states;
                   without it, states are kept in the parameter's dtype (as torch does).
                   cast_params(dtype) turns fp32 parameters into bf16/fp16 ones whose master copies
                   keep their exact fp32 values (bf16-weights training: no autocast casts per forward).
Arithmetic is fp32 for every storage dtype.

Kernels: torch.ops.fastbert_C.adam_step / multi_tensor_l2_norm (csrc/cpu/adam.cpp, csrc/cuda/adam.cu).
Without the compiled extension, CPU parameters take the reference path (`adam_reference`: torch's own
Adam on fp32 copies; also chosen by fastbert.use_backend("reference")); CUDA parameters need the CUDA
extension.
"""
from __future__ import annotations

import itertools

import torch
from torch.optim.adam import adam as torch_adam

from fastbert import _extension, backend

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class FusedAdam(torch.optim.Optimizer):
    """torch.optim.Adam with fused kernels, fused gradient clipping and fp32 master weights (module doc)."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False, max_grad_norm: float | None = None,
                 skip_nonfinite: bool = True, master_weights: bool = True):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("FusedAdam: a tensor lr must have one element")
        if not 0.0 <= lr:
            raise ValueError(f"FusedAdam: invalid learning rate {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"FusedAdam: invalid eps {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"FusedAdam: invalid beta parameter at index {i}: {beta}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"FusedAdam: invalid weight_decay {weight_decay}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"FusedAdam: max_grad_norm must be positive or None, got {max_grad_norm}")
        defaults = dict(lr=lr, betas=tuple(float(b) for b in betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        self.max_grad_norm, self.skip_nonfinite, self.master_weights = max_grad_norm, skip_nonfinite, master_weights
        self.grad_norm: torch.Tensor | None = None

    def __getstate__(self):
        return {**super().__getstate__(), "max_grad_norm": self.max_grad_norm,
                "skip_nonfinite": self.skip_nonfinite, "master_weights": self.master_weights, "grad_norm": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # a torch.optim.Adam state_dict has all of ours, an older one may not
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch casts every floating-point state to its parameter's dtype; ours are fp32 where there is a master
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            if self._has_master(p):
                for key in (*STATE_KEYS, "master_param"):
                    if key in saved:
                        self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def cast_params(self, dtype: torch.dtype, params=None) -> None:
        """Store `params` (default: all of this optimizer's) in `dtype` (bf16/fp16), each keeping its fp32
        value as its master copy, so nothing is lost to rounding; the step updates the master and rounds it
        into the parameter (to nearest even). Parameters already in `dtype` are left alone."""
        if not self.master_weights or dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"FusedAdam.cast_params: needs master_weights=True and bf16/fp16, got {dtype}")
        mine = {id(p) for group in self.param_groups for p in group["params"]}
        for p in params if params is not None else [p for group in self.param_groups for p in group["params"]]:
            if id(p) not in mine:
                raise ValueError(f"FusedAdam.cast_params: parameter {list(p.shape)} is not in this optimizer")
            if p.dtype == torch.float32:
                self.state[p]["master_param"] = p.detach().clone(memory_format=torch.preserve_format)
                p.data = p.data.to(dtype)

    def _has_master(self, p: torch.Tensor) -> bool:
        return self.master_weights and p.dtype != torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        """One step. Returns the closure's loss if given one, else the gradient norm (with max_grad_norm)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        impl = _implementation(_check(params))
        norm = clip_coef = None
        if self.max_grad_norm is not None:
            grads = [p.grad for p in params]
            norm = torch.ops.fastbert_C.multi_tensor_l2_norm(grads) if impl == "kernel" else l2_norm_reference(grads)
            self.grad_norm = norm
            if self.skip_nonfinite and not torch.isfinite(norm):
                return loss if closure is not None else norm
            clip_coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)  # as clip_grad_norm_ computes it
        for group in self.param_groups:
            self._step_group(group, clip_coef, impl)
        return loss if closure is not None else norm

    def _state(self, p: torch.Tensor, amsgrad: bool) -> dict:
        """p's state, created on its first step and brought to this optimizer's dtypes (after a torch load)."""
        state = self.state[p]
        master = self._has_master(p)
        dtype = torch.float32 if master else p.dtype
        zeros = lambda: torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)  # noqa: E731
        if "step" not in state:  # (a master copy may come first, from cast_params)
            state["step"] = torch.tensor(0.0)
            state["exp_avg"], state["exp_avg_sq"] = zeros(), zeros()
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = zeros()
        if master and "master_param" not in state:
            state["master_param"] = torch.empty_like(p, dtype=torch.float32).copy_(p)
        for key in STATE_KEYS:
            if key in state and state[key].dtype != dtype:
                state[key] = state[key].to(dtype)
        if state["step"].device.type != "cpu" or state["step"].dtype != torch.float32:  # torch's fused/capturable
            state["step"] = state["step"].to("cpu", torch.float32)
        return state

    def _step_group(self, group: dict, clip_coef: torch.Tensor | None, impl: str) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        amsgrad = group["amsgrad"]
        states = [self._state(p, amsgrad) for p in params]
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        for master in (False, True):  # one call for the parameters without master copies, one for those with
            part = [(p, s) for p, s in zip(params, states) if self._has_master(p) == master]
            if not part:
                continue
            ps, ss = zip(*part)
            args = (list(ps), [p.grad for p in ps], [s["exp_avg"] for s in ss], [s["exp_avg_sq"] for s in ss],
                    [s["max_exp_avg_sq"] for s in ss] if amsgrad else [],
                    [s["master_param"] for s in ss] if master else [], [s["step"] for s in ss],
                    lr, beta1, beta2, float(group["eps"]), float(group["weight_decay"]),
                    group["decoupled_weight_decay"], group["maximize"], clip_coef)
            (torch.ops.fastbert_C.adam_step if impl == "kernel" else adam_reference)(*args)


class FusedAdamW(FusedAdam):
    """torch.optim.AdamW with fused kernels: FusedAdam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 max_grad_norm: float | None = None, skip_nonfinite: bool = True, master_weights: bool = True):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         master_weights=master_weights)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always decoupled, whatever was loaded
            group["decoupled_weight_decay"] = True


def _check(params: list[torch.Tensor]) -> torch.device:
    """The one device of the parameters and gradients; a clear error for what the kernels cannot take."""
    for p in params:
        shape = list(p.shape)
        if p.grad.layout != torch.strided:
            raise RuntimeError(f"FusedAdam: the gradient of parameter {shape} is sparse ({p.grad.layout}); "
                               "sparse gradients are not supported (torch.optim.SparseAdam takes them)")
        if p.is_complex():
            raise TypeError(f"FusedAdam: parameter {shape} is complex ({p.dtype}); complex parameters are not "
                            "supported (optimize torch.view_as_real(p) instead)")
        if p.dtype not in FLOAT_DTYPES or p.grad.dtype != p.dtype:
            raise TypeError(f"FusedAdam: parameter {shape} has dtype {p.dtype} and gradient dtype {p.grad.dtype}; "
                            f"expected one of {list(FLOAT_DTYPES)}, the same for both")
    devices = {t.device for p in params for t in (p, p.grad)}
    if len(devices) > 1:
        raise ValueError(f"FusedAdam: parameters and gradients on mixed devices {sorted(map(str, devices))}; "
                         "use one optimizer per device")
    return devices.pop()


def _implementation(device: torch.device) -> str:
    """ "kernel" (torch.ops.fastbert_C) or "reference" (adam_reference) for parameters on `device`."""
    name = backend.get_backend()
    if name == "reference":
        return "reference"
    if device.type == "cuda":
        if _extension.cuda() is None:
            raise RuntimeError(
                f"FusedAdam: parameters on {device} need fastbert's CUDA extension (fastbert._C_cuda), which this "
                "install does not have: build fastbert with a CUDA build of torch and nvcc on PATH "
                "(pip install --no-build-isolation -e .), or use fastbert.use_backend('reference')")
        return "kernel"
    if device.type == "cpu" and _extension.has("adam_step"):
        return "kernel"
    if name == "cpu":
        raise RuntimeError(f"FusedAdam: backend 'cpu' but the C++ extension is {_extension.status()}")
    return "reference"


def l2_norm_reference(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm as clip_grad_norm_ computes it, in fp32."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors]))


def adam_reference(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr, beta1, beta2,
                   eps, weight_decay, decoupled_weight_decay, maximize, clip_coef):
    """adam_step in pure PyTorch: torch's single-tensor Adam on fp32 copies (or the master copies), stored back."""
    f32 = lambda ts: [t.float() for t in ts]  # noqa: E731 - fp32 tensors are used in place
    ps, ms, vs, vms = master_params or f32(params), f32(exp_avgs), f32(exp_avg_sqs), f32(max_exp_avg_sqs)
    gs = [g.float() * clip_coef if clip_coef is not None else g.float() for g in grads]
    torch_adam(ps, gs, ms, vs, vms, steps, foreach=False, decoupled_weight_decay=decoupled_weight_decay,
               amsgrad=bool(vms), beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps,
               maximize=maximize)
    for dst, src in zip([*params, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs], [*ps, *ms, *vs, *vms]):
        if dst is not src:
            dst.copy_(src)
