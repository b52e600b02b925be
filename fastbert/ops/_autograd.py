"""Eager calls of the fused ops without the custom-op dispatch.

Every kernel pair (forward, backward) is a torch.library custom op with register_autograd, so that
torch.compile traces it. In eager mode that dispatch costs ~0.3 ms of Python per op (forward + backward),
as much as a CPU kernel takes on a small batch; `function` runs the same kernels, setup_context and
backward formula as an autograd.Function instead, and hands over to the custom op while torch.compile traces.
"""
from __future__ import annotations

from typing import Callable

import torch


def register(op, kernel: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """Registers the autograd rule (setup_context, backward) of the forward custom op `op`, which wraps `kernel`;
    returns the callable the public op calls: `op` while torch.compile traces, else an autograd.Function."""
    op.register_autograd(backward, setup_context=setup_context)

    def forward(ctx, *args):  # (a separate setup_context would make apply() bind args by inspect: ~0.15 ms)
        output = kernel(*args)
        setup_context(ctx, args, output)
        return output

    fn = type(f"{kernel.__name__}_function", (torch.autograd.Function,),
              {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    return lambda *args: op(*args) if torch.compiler.is_compiling() else fn.apply(*args)


def pick(op, kernel: Callable) -> Callable:
    """For backward formulas: the backward custom op while torch.compile traces, else its kernel."""
    return op if torch.compiler.is_compiling() else kernel
