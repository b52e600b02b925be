"""A torch.compile backend for tests: aot_eager (AOTAutograd on fake tensors, so the fake and autograd
registrations of the custom ops run) that records the graph's call targets."""
from torch._dynamo.backends.registry import lookup_backend


def recording_backend(seen: set):
    aot_eager = lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot_eager(gm, example_inputs)

    return backend
