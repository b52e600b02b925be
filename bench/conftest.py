"""The benchmark suite's shared pieces: device, quick mode, real batches, the training workload, machine info.

  pytest bench/ --benchmark-only                   full run; JSON in bench/results/raw/<device>-<time>.json
  python bench/report.py --run                     full run into bench/results/<device>.json + BENCHMARKS.md
  pytest bench/ --benchmark-disable                quick mode (CI): tiny sizes, every benchmark runs once
  FASTBERT_BENCH_QUICK=1                           quick mode with timing on
  FASTBERT_BENCH_DEVICE=cpu|cuda                   the device (default: cuda when there is one)
  FASTBERT_DATA=DIR                                the data directory (default ../shared/data)

Real batches come from the CS224N SST / Quora / STS training files, sampled with a fixed seed, so a
benchmark sees their true length distribution; they are read by fastbert.data, as the driver reads them.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib
import os
import pkgutil
import platform
import random
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbert
from fastbert import BertConfig, BertModel, BertTokenizer
from fastbert.data.readers import read_table
from fastbert.pretrained import to_hf
from fastbert.tasks import read_split, task_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
DATA_DIR = os.environ.get("FASTBERT_DATA", os.path.join(ROOT, "..", "shared", "data"))
QUICK = os.environ.get("FASTBERT_BENCH_QUICK", "0") not in ("", "0")  # also set by --benchmark-disable
_skipped: list[str] = []


# -- session setup, results file, machine info ----------------------------------------------------------

def pytest_configure(config):
    global QUICK
    QUICK = QUICK or bool(config.getoption("benchmark_disable", False))


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    """Without --benchmark-json a timed run still writes its JSON, under bench/results/raw/."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None and not bs.disabled and not bs.json:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.makedirs(os.path.join(RESULTS, "raw"), exist_ok=True)
        bs.json = os.path.join(RESULTS, "raw", f"{device_name()}-{stamp}.json")


def pytest_runtest_logreport(report):
    """Skipped benchmarks and why, for the JSON (a benchmark that cannot run here is a result too)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if "--benchmark-only" not in reason:
            _skipped.append(f"{report.nodeid}: {reason}")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """fastbert's speed-ups (ratios of median real tokens/s, same process), after pytest-benchmark's tables."""
    bs = getattr(config, "_benchmarksession", None)
    rows = {}
    for b in (bs.benchmarks if bs is not None else []):
        e = b.extra_info
        if e.get("kind") in ("train", "inference") and e.get("tokens_per_s"):
            rows.setdefault((e["kind"], e["shape"]), {})[e["variant"]] = e["tokens_per_s"]
    lines = []
    for (kind, shape), tps in rows.items():
        if "fastbert" in tps:
            ratios = ", ".join(f"{tps['fastbert'] / v:.2f}x {name}" for name, v in tps.items() if name != "fastbert")
            lines.append(f"{kind} {shape}: fastbert {tps['fastbert']:,.0f} real tokens/s = {ratios}")
    if lines:
        terminalreporter.write_sep("-", "fastbert speed-up (median real tokens/s over each baseline's)")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_benchmark_update_machine_info(config, machine_info):
    dev = torch.device(device_name())
    info = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in _cpu_flags()],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "fastbert": fastbert.__version__,
        "op_backends": op_backends(dev),
        "optimizer": optimizer_name(),
        "bf16_matmul_tflops": matmul_tflops(dev, torch.bfloat16),
        "quick": QUICK,
        "skipped": list(_skipped),
    }
    machine_info["fastbert"] = info


def matmul_tflops(dev: torch.device, dtype: torch.dtype) -> float:
    """The machine's measured matmul rate in `dtype` (median of 5, bert-base's FFN shape), MFU's denominator."""
    import statistics
    import time

    m, k, n = (256, 64, 256) if QUICK else (16384 if dev.type == "cuda" else 2048, 768, 3072)
    a, b = torch.randn(m, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        a @ b
        sync(dev)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times[1:]) / 1e12


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
        return set(line.split(":", 1)[-1].split())
    except OSError:
        return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def op_backends(dev: torch.device) -> dict[str, str]:
    """What backend "auto" runs for each fused op (each fastbert.ops module with KERNELS) on this device."""
    import fastbert.ops
    from fastbert import backend

    out = {}
    with backend.use_backend("auto"):
        for m in pkgutil.iter_modules(fastbert.ops.__path__):
            kernels = getattr(importlib.import_module(f"fastbert.ops.{m.name}"), "KERNELS", None)
            if kernels is not None:
                op = {"embedding": "embedding_layer_norm"}.get(m.name, m.name)  # the op's name where it differs
                out[op] = backend.resolve(op, dev, kernels)
    return out


def cuda_step(mode: str, fn, inputs):
    """The per-op benchmarks' callable to time on CUDA: forward, backward of a fixed graph, or both; each
    ends synchronised."""
    grad = torch.randn(inputs[0].shape, device=inputs[0].device, dtype=inputs[0].dtype)
    if mode == "backward":
        out = fn(*inputs)
        return lambda: (torch.autograd.grad(out, inputs, grad, retain_graph=True), torch.cuda.synchronize())
    if mode == "forward":
        return lambda: (fn(*inputs), torch.cuda.synchronize())
    return lambda: (torch.autograd.grad(fn(*inputs), inputs, grad), torch.cuda.synchronize())


# -- device, quick mode --------------------------------------------------------------------------------

def device_name() -> str:
    name = os.environ.get("FASTBERT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"FASTBERT_BENCH_DEVICE must be cpu or cuda, got {name!r}")
    return name


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(device_name())


@pytest.fixture(scope="session")
def quick() -> bool:
    return QUICK


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(benchmark) -> float | None:
    """The median round time of a finished benchmark (None when benchmarks are disabled)."""
    return benchmark.stats.stats.median if benchmark.stats else None


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- real data -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def data_dir() -> str:
    if not os.path.isdir(DATA_DIR):
        pytest.skip(f"data directory {DATA_DIR} not found (set FASTBERT_DATA)")
    return DATA_DIR


def load_tasks(data_dir: str) -> dict[str, list[tuple]]:
    """task -> [(text, pair text or None, label)] from the CS224N training files (STS scores scaled to 0-1),
    read by the training driver's readers (malformed rows skipped, as the default run does)."""
    out = {}
    for name in ("sst", "quora", "sts"):
        rows = read_split(name, task_config(name), "train", data_dir, skipped=[])
        scale = 5.0 if name == "sts" else 1.0
        out[name] = [(e.texts[0], e.texts[1] if len(e.texts) > 1 else None,
                      e.label if name == "sst" else float(e.label) / scale) for e in rows]
    return out


@pytest.fixture(scope="session")
def tasks(data_dir):
    return load_tasks(data_dir)


@pytest.fixture(scope="session")
def tokenizer():
    return BertTokenizer.from_pretrained()


@dataclasses.dataclass
class TaskBatch:
    """One real batch in both layouts: padded (what Hugging Face takes) and packed (what fastbert takes)."""
    task: str
    padded: object  # fastbert.tokenizer.Batch
    packed: object
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.packed.lengths.sum())

    @property
    def padded_tokens(self) -> int:
        return self.padded.input_ids.numel()

    def to(self, device) -> "TaskBatch":
        return TaskBatch(self.task, self.padded.to(device), self.packed.to(device), self.labels.to(device))


def real_batches(tasks, tokenizer, n: int, batch_size: int, seed: int = 0) -> list[TaskBatch]:
    """n batches, tasks in turn (SST, Quora, STS, SST, ...), examples sampled without replacement,
    untruncated (up to 512 tokens): the data's own lengths."""
    rng = random.Random(seed)
    pools = {t: rng.sample(rows, len(rows)) for t, rows in tasks.items()}
    out = []
    for i in range(n):
        task = list(pools)[i % len(pools)]
        rows = [pools[task].pop() for _ in range(batch_size)]
        texts, pairs = [r[0] for r in rows], [r[1] for r in rows]
        enc = tokenizer.encode(texts, None if pairs[0] is None else pairs)
        labels = torch.tensor([r[2] for r in rows], dtype=torch.long if task == "sst" else torch.float32)
        out.append(TaskBatch(task, tokenizer.collate(enc), tokenizer.collate(enc, packed=True), labels))
    return out


def long_batch(data_dir, tokenizer, batch_size: int, seqlen: int) -> TaskBatch:
    """batch_size sequences of exactly seqlen tokens cut from the running text of CFIMDB movie reviews."""
    rows = [(e.texts[0], e.label) for e in read_table(os.path.join(data_dir, "cs224n", "ids-cfimdb-train.csv"),
                                                       text=["sentence"], label="sentiment", num_labels=2)]
    stream, body = [], seqlen - 2
    for ids, _ in tokenizer.encode([r[0] for r in rows[: 4 * batch_size * seqlen // 200 + 8]]):
        stream += ids[1:-1]
        if len(stream) >= batch_size * body:
            break
    seqs = [[tokenizer.cls_id, *stream[i * body:(i + 1) * body], tokenizer.sep_id] for i in range(batch_size)]
    enc = [(s, [0] * len(s)) for s in seqs]
    labels = torch.tensor([int(r[1]) for r in rows[:batch_size]], dtype=torch.long)
    return TaskBatch("sst", tokenizer.collate(enc), tokenizer.collate(enc, packed=True), labels)


# -- the models and the training workload --------------------------------------------------------------

MODEL_SHAPES = ("minilm", "bert-base")


def model_config(name: str) -> BertConfig:
    """all-MiniLM-L6-v2 and bert-base shapes; in quick mode a one-layer, 64-wide model stands in for both."""
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {name!r}")
    if QUICK:
        return BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256)
    return BertConfig.from_json(fastbert.pretrained.default_path()) if name == "minilm" else BertConfig.bert_base()


def quick_skip(shape: str) -> None:
    if QUICK and shape != MODEL_SHAPES[0]:
        pytest.skip(f"quick mode runs the {MODEL_SHAPES[0]} row only (the same tiny model stands in for every shape)")


def model_weights(name: str) -> dict[str, torch.Tensor]:
    """fastbert state dict: the packaged all-MiniLM-L6-v2 for "minilm", a seeded random init otherwise."""
    torch.manual_seed(0)
    if name == "minilm" and not QUICK:
        return BertModel.from_pretrained().state_dict()
    return BertModel(model_config(name)).state_dict()


def hf_model(config: BertConfig, weights: dict[str, torch.Tensor]):
    """transformers.BertModel (SDPA attention) holding the same weights as a fastbert model."""
    import transformers

    cfg = transformers.BertConfig(**config.to_dict(), attn_implementation="sdpa")
    model = transformers.BertModel(cfg, add_pooling_layer=True)
    missing, unexpected = model.load_state_dict(to_hf(weights), strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing), (missing, unexpected)
    return model


def optimizer_name() -> str:
    from fastbert.optim.adam import _implementation
    return f"fastbert.optim.FusedAdamW ({_implementation(torch.device(device_name()))})"


def make_optimizer(params, kind: str, lr: float = 5e-5, weight_decay: float = 0.01):
    """kind "fastbert": fastbert.optim.FusedAdamW; kind "torch": torch.optim.AdamW(fused=True), the strongest
    stock baseline."""
    params = list(params)
    if kind == "fastbert":
        from fastbert.optim import FusedAdamW
        return FusedAdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


class TaskHeads(nn.Module):
    """The CS224N multitask heads on the pooled output: SST 5-way, Quora paraphrase logit, STS score."""

    def __init__(self, hidden: int):
        super().__init__()
        self.sst, self.quora, self.sts = nn.Linear(hidden, 5), nn.Linear(hidden, 1), nn.Linear(hidden, 1)

    def loss(self, task: str, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = getattr(self, task)(pooled.float())
        if task == "sst":
            return F.cross_entropy(out, labels)
        if task == "quora":
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), labels)
        return F.mse_loss(out.squeeze(-1), labels)


# name -> (implementation, precision). Precisions as the training driver's (fastbert/train/config.py):
#   bf16           bf16 weights, fp32 master weights and Adam states in fastbert's FusedAdamW, no autocast
#   bf16-autocast  fp32 weights under torch.autocast(bf16)
#   fp32
# fastbert, the default fast path, trains bf16 weights on packed batches.
VARIANTS = {
    "fastbert": ("fastbert", "bf16"),
    "fastbert-bf16-autocast": ("fastbert", "bf16-autocast"),
    "fastbert-fp32": ("fastbert", "fp32"),
    "reference-fp32": ("reference", "fp32"),
    "reference-bf16": ("reference", "bf16-autocast"),
    "hf-fp32": ("hf", "fp32"),
    "hf-bf16": ("hf", "bf16-autocast"),
    "hf-bf16-compile": ("hf-compile", "bf16-autocast"),
}


class Runner:
    """One model variant with its task heads and optimizer: train steps and inference on TaskBatches."""

    def __init__(self, variant: str, shape: str, device: torch.device, weights=None):
        impl, self.precision = VARIANTS[variant]
        self.amp = torch.bfloat16 if self.precision == "bf16-autocast" else None
        self.variant, self.device = variant, device
        config = model_config(shape)
        weights = weights if weights is not None else model_weights(shape)
        if impl in ("fastbert", "reference"):
            self.model = BertModel(config, backend="auto" if impl == "fastbert" else "reference")
            self.model.load_state_dict(weights)
            self.packed = True
        else:
            self.model = hf_model(config, weights)
            self.packed = False
        self.model.to(device)
        self.forward = torch.compile(self.model, dynamic=True) if impl == "hf-compile" else self.model
        torch.manual_seed(1)
        self.heads = TaskHeads(config.hidden_size).to(device)
        self.config = config
        self.optimizer_kind = "fastbert" if impl == "fastbert" else "torch"
        self.opt = make_optimizer([*self.model.parameters(), *self.heads.parameters()], self.optimizer_kind)
        if self.precision == "bf16":  # the encoder in bf16, its fp32 values kept as the optimizer's masters
            self.opt.cast_params(torch.bfloat16, list(self.model.parameters()))
        gc.freeze()  # data and models set up so far live on: out of the collector's full passes, as the driver does

    def weights(self) -> list[torch.Tensor]:
        """The encoder's parameters as trained: the fp32 master copies where the optimizer keeps them."""
        return [self.opt.state[p].get("master_param", p).detach() for p in self.model.parameters()]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def pooled(self, b: TaskBatch) -> torch.Tensor:
        if self.packed:
            return self.forward(**b.packed.model_inputs()).pooler_output
        p = b.padded
        return self.forward(input_ids=p.input_ids, attention_mask=p.attention_mask,
                            token_type_ids=p.token_type_ids).pooler_output

    def train_step(self, b: TaskBatch) -> torch.Tensor:
        self.model.train()
        with self.autocast():
            loss = self.heads.loss(b.task, self.pooled(b), b.labels)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.inference_mode()
    def infer(self, b: TaskBatch) -> torch.Tensor:
        self.model.eval()
        with self.autocast():
            return self.pooled(b)

    def state_bytes(self) -> int:
        """Bytes held between steps: parameters and optimizer state (gradients are freed each step)."""
        tensors = [*self.model.parameters(), *self.heads.parameters()]
        tensors += [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)


def batch_rounds(tasks, tokenizer, n: int, batches: int, batch: int, seed: int, device: torch.device,
                 repeat: bool = False) -> list[list[TaskBatch]]:
    """n + 1 rounds of `batches` real batches each: new ones every round, as training sees them (new token
    counts; on CPU a bf16 matmul pays for every new shape), or the same ones with `repeat`. Every variant gets
    the same rounds; round 0 is for warming up."""
    seeds = [seed + (0 if repeat else 100 * i) for i in range(n + 1)]
    return [[b.to(device) for b in real_batches(tasks, tokenizer, batches, batch, seed=s)] for s in seeds]


def interleaved_train_rounds(runners: dict[str, "Runner"], rounds: list[list[TaskBatch]],
                             device: torch.device) -> dict[str, list[float]]:
    """Seconds per timed round per variant. rounds[0] warms every variant up (optimizer state, allocator,
    matmul kernels), untimed; then round i runs through every variant in turn, the order rotated each round
    so that every variant runs in every position; on a shared machine the noise then falls on all alike
    (running one variant's rounds after another's measured the same ratios 30-60% apart between runs)."""
    for r in runners.values():
        for b in rounds[0]:
            r.train_step(b)
    times = {v: [] for v in runners}
    order = list(runners)
    for i, batches in enumerate(rounds[1:]):
        for v in order[i % len(order):] + order[:i % len(order)]:
            sync(device)
            t = time.perf_counter()
            for b in batches:
                runners[v].train_step(b)
            sync(device)
            times[v].append(time.perf_counter() - t)
    return times


def round_medians(config: BertConfig, rounds: list[list[TaskBatch]]) -> tuple[float, float]:
    """(real tokens, training-step model FLOPs) of a round: medians over `rounds` (they differ by a few %)."""
    lengths = [[n for b in r for n in b.packed.lengths.tolist()] for r in rounds]
    return (statistics.median(sum(ls) for ls in lengths),
            statistics.median(train_flops(config, ls) for ls in lengths))


def train_flops(config: BertConfig, lengths: list[int]) -> float:
    """Model FLOPs of one training step (forward + 2x for backward) over sequences of these real lengths:
    the encoder's matmuls (QKV, output, FFN) and attention (QK^T, PV); embeddings and heads left out."""
    return 3 * forward_flops(config, lengths)


def forward_flops(config: BertConfig, lengths: list[int]) -> float:
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens, sq = sum(lengths), sum(n * n for n in lengths)
    return n_layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * sq * h)
