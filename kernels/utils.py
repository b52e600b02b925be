"""Launch helpers the kernel modules share: the interpreter switch, candidate configs (Tuned), dropout
arguments and keep mask, the row tiling of layer_norm and embedding, parameter dtypes, program counts and
the AOT pointer types."""
import torch
import triton
import triton.language as tl

from fastbert.kernels import dropout_threshold


def interpreted() -> bool:
    """Whether Triton runs the kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return bool(triton.knobs.runtime.interpret)


# -- candidate configs --

class Tuned:
    """A @triton.jit kernel and its candidate triton.Configs (block sizes, launch options).

    On a GPU a launch goes through triton.autotune over the candidates that `prune(configs, nargs, **kwargs)`
    keeps for the call, timed once per distinct value of the `key` arguments (and of the tensors' dtypes);
    in the interpreter it runs the launcher's fixed Config, so interpreted results stay exactly as they are.
    Every tuned kernel writes its outputs whole, from inputs it does not modify (no accumulation, no
    in-place update), so autotune's repeated benchmark runs leave the results right without
    reset_to_zero / restore_value.
    """

    def __init__(self, fn, configs: list, key: list[str], prune=None):
        self.fn, self.configs = fn, configs
        self.autotuned = triton.autotune(configs, key, prune_configs_by=prune and {"early_config_prune": prune})(fn)

    def kernel(self, interpret: bool):
        """What a launch calls: the bare kernel in the interpreter (with the fixed config), else the autotuner."""
        return self.fn if interpret else self.autotuned

    def __call__(self, grid, fixed: triton.Config, *args, **kwargs):
        """Launch over grid(META), META holding the chosen config's constexprs; `fixed` when interpreted."""
        interpret = interpreted()
        kernel, meta = self.kernel(interpret), fixed.all_kwargs() if interpret else {}
        return kernel[grid(meta) if interpret else grid](*args, **kwargs, **meta)


# -- dropout (fastbert.ops.philox) --

def dropout_args(dropout_p: float) -> tuple[int, float]:
    """(threshold on the 16 random bits, scale of the kept elements)."""
    return dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p)


def row_keys(keys, rows: int, dropout_p: float, device) -> torch.Tensor:
    """What a row-wise kernel's KEYS points at: the rows' dropout keys (None: their indices 0 .. rows-1; without
    dropout an empty tensor, which the kernels never read)."""
    if dropout_p == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.arange(rows, device=device) if keys is None else keys


@triton.jit
def keep_rows(seed, keys, N, threshold, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, ALIGNED: tl.constexpr):
    """Dropout keep mask [ROWS, BLOCK_N] of a row-wise site: elements keys * N + col (keys: int64 [ROWS], the
    rows' dropout keys), per fastbert.ops.philox."""
    if ALIGNED:
        # N % 8 == 0: rows start Philox groups and one call feeds 8 elements; generate per [row, group, 8].
        groups = (keys * N >> 3)[:, None] + tl.arange(0, BLOCK_N // 8)[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, groups)
        e = tl.arange(0, 8)[None, None, :]
        word = tl.where(e < 2, r0[:, :, None], tl.where(e < 4, r1[:, :, None],
                                                        tl.where(e < 6, r2[:, :, None], r3[:, :, None])))
        keep = ((word >> ((e & 1) * 16).to(tl.uint32)) & 0xFFFF).to(tl.int32) >= threshold
        return tl.reshape(keep, [ROWS, BLOCK_N])
    else:
        # Rows start inside Philox groups: one call per element.
        i = (keys * N)[:, None] + tl.arange(0, BLOCK_N)[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, i >> 3)
        w = (i & 7) >> 1
        word = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
        return ((word >> (16 * (i & 1)).to(tl.uint32)) & 0xFFFF).to(tl.int32) >= threshold


# -- row tiling: the kernels that hold whole rows of N elements (layer_norm, embedding) --

MAX_N = 4096
MIN_BLOCK = 512  # shorter rows share one compiled variant (masked lanes), keeping the variant count down
GPU_TILE = 2048  # elements a program holds at a time on a GPU (the first candidate)
TILE = 16 * GPU_TILE if interpreted() else GPU_TILE  # the interpreter pays per operation, not per element
ROW_BLOCKS = [MIN_BLOCK << k for k in range((MAX_N // MIN_BLOCK).bit_length())]  # every BLOCK_N


def check_row_size(op: str, n: int) -> None:
    if not 1 <= n <= MAX_N:
        raise ValueError(f"{op}: the triton kernel supports hidden sizes 1..{MAX_N}, got {n}")


def row_block(n: int) -> int:
    """BLOCK_N of rows of n elements: the next power of two, at least MIN_BLOCK."""
    return max(MIN_BLOCK, triton.next_power_of_2(n))


def row_config(n: int, dropout: bool, backward: bool, tile: int, per_thread: int = 0) -> tuple[dict, dict]:
    """(constexprs, launch options) of the row-tiled kernels for rows of n elements: BLOCK_N = row_block(n),
    ROWS rows per tile of `tile` (TILE) elements; `per_thread` elements per thread, by default 8 in forward
    and 4 in backward (it holds more per element: at 8, BLOCK_N=4096 needs 16 warps and spills under their
    128-register cap). maxnreg states the register file's share per thread, else ptxas may spill a few
    bytes for occupancy."""
    block_n = row_block(n)
    rows = max(1, tile // block_n)
    num_warps = min(rows * block_n // (32 * (per_thread or (4 if backward else 8))), 32)
    return (dict(ALIGNED=dropout and n % 8 == 0, ROWS=rows, BLOCK_N=block_n),
            dict(num_warps=num_warps, num_stages=1, maxnreg=min(255, 65536 // (32 * num_warps))))


def row_candidates(n: int, backward: bool) -> list[triton.Config]:
    """Candidate configs of the row-tiled kernels for rows of n elements, row_config's at GPU_TILE first.
    Forward: also twice the rows per program, and half the elements per thread (twice the warps). Backward
    keeps ROWS (its launcher sizes rows_per_program and the partial sums from it) and tries half the
    elements per thread. ALIGNED is the launcher's (it depends on the dropout and n)."""
    base = 4 if backward else 8
    choices = [(GPU_TILE, base), (GPU_TILE, base // 2)] if backward else \
        [(GPU_TILE, base), (2 * GPU_TILE, base), (GPU_TILE, base // 2)]
    configs = {}
    for tile, per_thread in choices:
        constexprs, launch = row_config(n, False, backward, tile, per_thread)
        del constexprs["ALIGNED"]
        configs.setdefault((constexprs["ROWS"], launch["num_warps"]), triton.Config(constexprs, **launch))
    return list(configs.values())


def row_configs(backward: bool) -> list[triton.Config]:
    """row_candidates for every BLOCK_N, the configs a row-tiled kernel is autotuned over."""
    return [c for block in ROW_BLOCKS for c in row_candidates(block, backward)]


def row_prune(configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """The candidates whose BLOCK_N fits the call's rows of N elements (autotune's early_config_prune)."""
    return [c for c in configs if c.kwargs["BLOCK_N"] == row_block(nargs["N"])]


def fixed_row_config(n: int, dropout: bool, backward: bool, tile: int) -> tuple[dict, triton.Config]:
    """(the per-call constexprs, the fixed config) of row_config: the interpreter's choice."""
    constexprs, launch = row_config(n, dropout, backward, tile)
    return dict(ALIGNED=constexprs.pop("ALIGNED")), triton.Config(constexprs, **launch)


def launch_options(config: triton.Config) -> dict:
    """A config's launch options, as aot_specs() list them."""
    return dict(num_warps=config.num_warps, num_stages=config.num_stages, maxnreg=config.maxnreg)


def row_variants() -> list[tuple[int, bool, str]]:
    """(n, dropout, tag): one row size per BLOCK_N and dropout mode (none, grouped Philox for n % 8 == 0,
    per-element Philox otherwise), for aot_specs()."""
    modes = [(False, 8), (True, 8), (True, 1)]  # (dropout, n % 8)
    return [(block - 8 + n_mod, dropout, f"drop={'-' if not dropout else 'ge'[n_mod != 8]} BLOCK_N={block}")
            for block in ROW_BLOCKS for dropout, n_mod in modes]


def param_dtype(x_dtype: torch.dtype, *params: torch.Tensor | None) -> torch.dtype:
    """Weights and biases load in x's dtype or in fp32: other mixes are cast up (N elements, exact)."""
    return x_dtype if all(p.dtype == x_dtype for p in params if p is not None) else torch.float32


def programs(device: torch.device, interpreted_count: int) -> int:
    """Programs for a kernel whose programs each walk many rows: about 4 per SM on a GPU (few partial sums
    to add up afterwards), `interpreted_count` in the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return interpreted_count


def bwd_rows_per_program(rows: int, tile_rows: int, device: torch.device) -> int:
    """Rows per program of the row-tiled backward kernels, a multiple of the tile (4 programs interpreted)."""
    return triton.cdiv(triton.cdiv(rows, programs(device, 4)), tile_rows) * tile_rows


# -- ahead-of-time compilation --

PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}  # Triton pointer types
