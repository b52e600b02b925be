"""One definition of a fused op: its kernels as torch custom ops, and the eager path that skips them.

A fused op has a forward and a backward kernel, `<name>_forward` and `<name>_backward`, in two backends:
torch.ops.fastbert_C (impl "cpu") and a Triton module of fastbert.kernels (impl "triton"), each with the
signature of the op's kernel contract. An op file states, once each:
  forward_fake, backward_fake   each kernel's output shapes for torch.compile; their annotated signatures
                                are the kernels' (the custom ops' schemas, plus a last argument `impl: str`)
  setup_context, backward       the autograd rule, as torch.library.register_autograd takes it
and FusedOp registers `fastbert::<name>_forward` / `_backward` as custom ops with them (what
torch.compile traces). Eager calls run the same kernels, setup_context and backward as an
autograd.Function instead, without the custom-op dispatch and its Python cost (README, "Use it").
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch


def kernels(impl: str, triton_module: str):
    """The namespace holding the kernels of backend `impl`: the C++ extension's ops or the Triton module."""
    return torch.ops.fastbert_C if impl == "cpu" else importlib.import_module(triton_module)


def _kernel(name: str, triton_module: str, nargs: int) -> Callable:
    """Calls kernel `name` of the backend its last argument (impl) names with its first `nargs` arguments."""
    def kernel(*args):
        return getattr(kernels(args[-1], triton_module), name)(*args[:nargs])

    kernel.__name__ = name
    return kernel


def _custom_op(name: str, kernel: Callable, fake: Callable):
    """`kernel` as the custom op fastbert::<name>, with `fake`'s signature and a last `str impl`."""
    schema = torch.library.infer_schema(fake, mutates_args=()).replace(") -> ", ", str impl) -> ", 1)
    op = torch.library.custom_op(f"fastbert::{name}", kernel, mutates_args=(), schema=schema)
    op.register_fake(lambda *args: fake(*args[:-1]))
    return op


def _function(name: str, kernel: Callable, setup_context: Callable, backward: Callable):
    """The autograd.Function running `kernel` with the op's autograd rule."""
    def forward(ctx, *args):  # setup_context here: as a separate staticmethod, apply() would bind args by inspect
        output = kernel(*args)
        setup_context(ctx, args, output)
        return output

    return type(f"{name}_function", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


class FusedOp:
    """A fused op's kernels (see the module docstring). Call it with the forward kernel's arguments and
    `impl`; a backward formula calls `run_backward` with the backward kernel's arguments and `impl`.

    kernel_args: how many leading arguments the forward kernel takes (default: all of forward_fake's);
    the others reach setup_context only.
    """

    def __init__(self, name: str, triton_module: str, forward_fake: Callable, backward_fake: Callable,
                 setup_context: Callable, backward: Callable, kernel_args: int | None = None):
        self.name, self.triton_module = name, triton_module
        arity = lambda fn: len(inspect.signature(fn).parameters)  # noqa: E731
        self.forward_kernel = _kernel(f"{name}_forward", triton_module,
                                      arity(forward_fake) if kernel_args is None else kernel_args)
        self.backward_kernel = _kernel(f"{name}_backward", triton_module, arity(backward_fake))
        self.forward_op = _custom_op(f"{name}_forward", self.forward_kernel, forward_fake)
        self.backward_op = _custom_op(f"{name}_backward", self.backward_kernel, backward_fake)
        self.forward_op.register_autograd(backward, setup_context=setup_context)
        self.function = _function(name, self.forward_kernel, setup_context, backward)

    def __call__(self, *args):
        """The forward kernel's outputs, differentiable: the custom op while torch.compile traces, else the
        autograd.Function."""
        return self.forward_op(*args) if torch.compiler.is_compiling() else self.function.apply(*args)

    def run_backward(self, *args):
        """For the backward formula: the backward custom op while torch.compile traces, else its kernel."""
        return self.backward_op(*args) if torch.compiler.is_compiling() else self.backward_kernel(*args)

    def kernels(self, impl: str):
        """The namespace holding this op's kernels of backend `impl`."""
        return kernels(impl, self.triton_module)
