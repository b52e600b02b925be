"""Input checks shared by the ops: each failure names the op, the argument and what was wrong."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def tensor(op: str, name: str, t, *, dim: int | None = None, min_dim: int | None = None, dtypes=FLOAT_DTYPES,
           device=None, shape: tuple | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "meta":  # (torch.compile's fake tensors report the device they stand for)
        raise ValueError(f"{op}: {name} is a meta tensor (shape {list(t.shape)}, no data); the ops run on cpu or "
                         "cuda tensors")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: {name} must have {dim} dimensions, got shape {list(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{op}: {name} must have at least {min_dim} dimension(s), got shape {list(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; expected one of {list(dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the input is on {device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {list(t.shape)}; expected {list(shape)}")


def features(op: str, name: str, t: torch.Tensor, what: str = "hidden size") -> None:
    """The last dimension of t (its hidden size or head dim) must not be empty."""
    if t.shape[-1] == 0:
        raise ValueError(f"{op}: {name} has {what} 0 (shape {list(t.shape)}); it must be at least 1")


def dropout_p(op: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {p}")
