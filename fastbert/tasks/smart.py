"""SMART regularisation: smoothness-inducing adversarial regularisation on the embedding output.

Jiang, He, Chen, Liu, Gao, Zhao 2020, "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural
Language Models through Principled Regularized Optimization" (ACL 2020), section 3.1 and Algorithm 1:

    loss = task loss + weight * mean_i ls(f(x_i), f(x_i + delta_i))

x_i is the embedding layer's output (the encoder's input) for example i, f the encoder and head up to the
task's raw outputs (`Task.outputs`), delta_i the most divergent perturbation within eps of it: delta starts
as Gaussian noise of std `noise`; each of `steps` projected gradient ascent steps adds `step` times the
gradient of ls(f(x), f(x + delta)) (f(x) held fixed) divided by its infinity norm (per sequence here: a
bi-encoder pair's two sequences count apart), then clips delta to [-eps, eps] (the infinity-norm ball).
ls is the task's `smoothness`: "kl", the symmetric KL divergence of the two softmax distributions
(classification: sst, quora with the softmax loss); "mse", the squared difference (regression: sts; quora's
cosine losses compare the cosine). The paper's settings: eps 1e-5, step 1e-3, noise 1e-5, one step, weight
in {1, 3, 5}. (The paper's other half, the Bregman proximal point optimiser, is not here.)

Inputs: a sentence Task (`outputs`, `smoothness`, `loss_on`), the Encode it trains through, a TaskBatch, and
the settings {weight, eps, step, noise, steps} (the `smart` setting, fastbert.train.config). f(x) comes from
the same encoder pass as the task loss; the ascent steps' gradients reach delta only (torch.autograd.grad);
the returned loss's gradient reaches the encoder and the head through the clean and the perturbed passes.
Each ascent step costs one forward and backward pass of the encoder, the perturbed pass one more of each.

Example:
    from fastbert.tasks import smart
    from fastbert.tasks.base import Encode
    settings = {"weight": 1.0, "eps": 1e-5, "step": 1e-3, "noise": 1e-5, "steps": 1}
    value = smart.loss(model.tasks["sst"], Encode(model.encoder), batch, settings)  # CE + 1.0 * sym. KL
    value.backward()

Where it does not apply, `loss` is the task's own loss, with no extra pass and no random draw: weight 0,
a task without outputs (MLM, SimCSE), a frozen encoder (no gradient reaches delta through it).

What the paper's sizes measure: f(x) and f(x + delta) are two training passes, each with its own dropout
masks, so ls also holds their dropout difference. On the packaged MiniLM before fine-tuning (fp32, 16
training examples, new heads) a delta of eps 1e-5 makes ls about 1e-9 (SST logits) / 2e-7 (STS scores),
where two dropout passes differ by about 4e-3 (SST): at these sizes the term is mostly a dropout-consistency
penalty. The authors' code (MT-DNN's SmartPerturbation) keeps no eps ball: its delta is `step` times the
gradient normalised per token (size 1e-3, the noise dropped), close to eps >= step here.
Precision: delta is added to the embedding output in the encoder's dtype. bf16 keeps 8 significant bits
(fp16 11), so a delta of 1e-5 on embeddings near 1 is lost to rounding: with bf16 weights f(x + noise)
can round to f(x) exactly, where ls has zero gradient and delta never moves, or differ by rounding noise
larger than the perturbation's effect (bf16-autocast likewise, in the first matmuls); the driver's run.log
says so. Precision fp32 keeps it.
Several ranks: each draws the noise of its own share of the batch (as dropout), so the runs follow one
process only in distribution; the mean is over the global batch (collectives.global_mean).
"""
from __future__ import annotations

import torch

from fastbert import collectives
from fastbert.data.batching import TaskBatch
from fastbert.tasks.base import Encode, Task
from fastbert.tokenizer import Batch

KINDS = ("kl", "mse")  # Task.smoothness values


def applies(task: Task, encode: Encode, settings: dict) -> bool:
    """Whether the regulariser is added: a positive weight, a task with outputs, an encoder that trains."""
    return settings["weight"] > 0 and task.smoothness is not None and not encode.frozen


def loss(task: Task, encode: Encode, batch: TaskBatch, settings: dict) -> torch.Tensor:
    """The task's loss on `batch`, plus weight * the SMART regulariser where it applies."""
    if not applies(task, encode, settings):
        return task.loss(encode, batch)
    e = task.embed(encode, batch)
    reg = regularizer(task, encode, batch, task.outputs(e, batch), settings)
    return task.loss_on(e, batch) + settings["weight"] * reg


def regularizer(task: Task, encode: Encode, batch: TaskBatch, clean: torch.Tensor, settings: dict) -> torch.Tensor:
    """The mean over the global batch of ls(f(x), f(x + delta)) at the adversarial delta; clean: f(x)."""
    delta = adversarial(task, encode, batch, clean.detach(), settings)
    perturbed = task.outputs(task.embed(encode, batch, delta), batch)
    return collectives.global_mean(divergence(task.smoothness, perturbed, clean))


def adversarial(task: Task, encode: Encode, batch: TaskBatch, clean: torch.Tensor, settings: dict) -> torch.Tensor:
    """delta [*input_ids.shape, hidden], fp32: noise, then `steps` projected ascent steps on
    sum_i ls(f(x_i + delta_i), clean_i) (each example's delta sees only its own term; gradients are taken
    also where the caller disabled them)."""
    shape = (*batch.inputs.input_ids.shape, task.hidden_size)
    delta = torch.randn(shape, device=clean.device) * settings["noise"]
    for _ in range(settings["steps"]):
        with torch.enable_grad():
            delta.requires_grad_(True)
            d = divergence(task.smoothness, task.outputs(task.embed(encode, batch, delta), batch), clean).sum()
            grad, = torch.autograd.grad(d, delta)
        delta = ascent(delta.detach(), grad, batch.inputs, settings["step"], settings["eps"])
    return delta


def divergence(kind: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """ls per example [n], fp32. kl: KL(P||Q) + KL(Q||P) = sum_c (P - Q)(log P - log Q) of softmax(p), softmax(q)
    (logits [n, classes]); mse: (p - q)^2 (scores [n])."""
    if kind == "kl":
        lp, lq = p.float().log_softmax(-1), q.float().log_softmax(-1)
        return ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)
    if kind == "mse":
        return (p.float() - q.float()).square()
    raise ValueError(f"smoothness must be one of {KINDS}, got {kind!r}")


def ascent(delta: torch.Tensor, grad: torch.Tensor, inputs: Batch, step: float, eps: float) -> torch.Tensor:
    """One projected ascent step: delta + step * grad / ||grad||_inf (per sequence), clipped to [-eps, eps]."""
    scale = sequence_max(grad, inputs).clamp_min(torch.finfo(grad.dtype).tiny)
    return (delta + step * grad / scale).clamp(-eps, eps)


def sequence_max(g: torch.Tensor, inputs: Batch) -> torch.Tensor:
    """max |g| over each sequence's tokens, broadcast to g's layout: padded [B, S, hidden] -> [B, 1, 1],
    packed [T, hidden] -> [T, 1] (each token gets its sequence's)."""
    per_token = g.abs().amax(-1)
    if inputs.cu_seqlens is None:
        return per_token.amax(-1)[:, None, None]
    lengths = inputs.lengths.to(g.device).long()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=g.device), lengths)
    per_seq = per_token.new_zeros(len(lengths)).scatter_reduce(0, seq, per_token, "amax")
    return per_seq[seq][:, None]
