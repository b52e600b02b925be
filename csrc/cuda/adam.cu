// Fused Adam/AdamW on CUDA, torch-free (raw pointers, a cudaStream_t), multi-tensor-apply style: the
// parameters are cut into chunks of kCudaChunk elements, one block per chunk, and a launch carries up to
// kMaxTensors tensors and kMaxBlocks chunks in its kernel argument (plan_launches in csrc/adam.h), so all
// parameters take a few launches. The per-element math is adam_update (csrc/adam.h), shared with the CPU core.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "adam.h"

namespace fastbert::adam {
namespace {

constexpr int kThreads = 512;
constexpr int kIlp = 4;  // elements per thread in flight
constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastbert adam (CUDA) ") + what + ": " +
                                                   cudaGetErrorString(err));
}

__device__ __forceinline__ float load(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load(const bf16* x, int64_t i) { return bf16_to_float(x[i].bits); }
__device__ __forceinline__ float load(const f16* x, int64_t i) { return __half2float(__ushort_as_half(x[i].bits)); }
__device__ __forceinline__ void store(float* x, int64_t i, float v) { x[i] = v; }
__device__ __forceinline__ void store(bf16* x, int64_t i, float v) { x[i].bits = float_to_bf16(v); }
__device__ __forceinline__ void store(f16* x, int64_t i, float v) { x[i].bits = __half_as_ushort(__float2half_rn(v)); }

// The kernel argument of one launch (kernel arguments are limited to 4 KiB).
struct AdamLaunch {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  void* exp_avg[kMaxTensors];
  void* exp_avg_sq[kMaxTensors];
  void* max_exp_avg_sq[kMaxTensors];
  float* master[kMaxTensors];
  int64_t numel[kMaxTensors];
  StepCoeffs coeffs[kMaxTensors];
  uint8_t block_slot[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};
static_assert(sizeof(AdamLaunch) + sizeof(Hyper) + sizeof(float*) <= 4096, "kernel argument over 4 KiB");

struct NormLaunch {
  const void* data[kMaxTensors];
  int64_t numel[kMaxTensors];
  uint8_t block_slot[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

// P: param/grad storage, S: state storage (fp32 with a master copy, else P).
template <class P, class S, bool MASTER, bool AMSGRAD>
__global__ void __launch_bounds__(kThreads) adam_kernel(const __grid_constant__ AdamLaunch a, const Hyper h,
                                                        const float* clip_coef) {
  const int t = a.block_slot[blockIdx.x];
  const int64_t lo = int64_t(a.block_chunk[blockIdx.x]) * kCudaChunk;
  const int64_t hi = min(lo + kCudaChunk, a.numel[t]);
  P* __restrict__ p = static_cast<P*>(a.param[t]);
  const P* __restrict__ g = static_cast<const P*>(a.grad[t]);
  S* __restrict__ m = static_cast<S*>(a.exp_avg[t]);
  S* __restrict__ v = static_cast<S*>(a.exp_avg_sq[t]);
  S* __restrict__ vm = static_cast<S*>(a.max_exp_avg_sq[t]);
  float* __restrict__ master = a.master[t];
  const StepCoeffs c = a.coeffs[t];
  const float grad_scale = clip_coef ? h.grad_sign * *clip_coef : h.grad_sign;
  for (int64_t base = lo + threadIdx.x; base < hi; base += int64_t(kThreads) * kIlp) {
    float rp[kIlp], rg[kIlp], rm[kIlp], rv[kIlp], rvm[kIlp];
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {  // all loads first: kIlp independent loads per stream in flight
      const int64_t i = base + int64_t(k) * kThreads;
      if (i < hi) {
        rp[k] = MASTER ? master[i] : load(p, i);
        rg[k] = load(g, i);
        rm[k] = load(m, i);
        rv[k] = load(v, i);
        if (AMSGRAD) rvm[k] = load(vm, i);
      }
    }
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int64_t i = base + int64_t(k) * kThreads;
      if (i < hi) {
        adam_update<AMSGRAD>(rp[k], rg[k], rm[k], rv[k], &rvm[k], h, grad_scale, c);
        if (MASTER) master[i] = rp[k];
        store(p, i, rp[k]);
        store(m, i, rm[k]);
        store(v, i, rv[k]);
        if (AMSGRAD) store(vm, i, rvm[k]);
      }
    }
  }
}

__device__ __forceinline__ float block_sum(float x) {  // the sum over the block, valid in thread 0
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = x;
  __syncthreads();
  x = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  return x;
}

// Sum of squares of each chunk into partial[first_block + blockIdx.x].
template <class T>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(const __grid_constant__ NormLaunch a,
                                                               float* partial, int64_t first_block) {
  const int t = a.block_slot[blockIdx.x];
  const int64_t lo = int64_t(a.block_chunk[blockIdx.x]) * kCudaChunk;
  const int64_t hi = min(lo + kCudaChunk, a.numel[t]);
  const T* __restrict__ x = static_cast<const T*>(a.data[t]);
  float s = 0.0f;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    const float xi = load(x, i);
    s = fmaf(xi, xi, s);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[first_block + blockIdx.x] = s;
}

// One block: out = sqrt(sum of partial[0, n)), in a fixed order (no atomics: the same norm every run).
__global__ void __launch_bounds__(kThreads) finish_norm_kernel(const float* partial, int64_t n, float* out) {
  __shared__ double sums[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += partial[i];
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sums[threadIdx.x] += sums[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = float(sqrt(sums[0]));
}

template <class P, class S, bool MASTER, bool AMSGRAD>
void launch_adam(const std::vector<const Param*>& ts, const Hyper& h, const float* clip_coef, cudaStream_t stream) {
  std::vector<int64_t> numels;
  for (const Param* t : ts) numels.push_back(t->numel);
  plan_launches<kMaxTensors, kMaxBlocks>(
      numels.data(), int(numels.size()), kCudaChunk,
      [&](const int* ids, int nt, const uint8_t* slot, const int32_t* chunk, int nb) {
        AdamLaunch a{};
        for (int k = 0; k < nt; ++k) {
          const Param& t = *ts[ids[k]];
          a.param[k] = t.param, a.grad[k] = t.grad, a.exp_avg[k] = t.exp_avg, a.exp_avg_sq[k] = t.exp_avg_sq;
          a.max_exp_avg_sq[k] = t.max_exp_avg_sq, a.master[k] = t.master, a.numel[k] = t.numel;
          a.coeffs[k] = t.coeffs;
        }
        for (int b = 0; b < nb; ++b) a.block_slot[b] = slot[b], a.block_chunk[b] = chunk[b];
        adam_kernel<P, S, MASTER, AMSGRAD><<<nb, kThreads, 0, stream>>>(a, h, clip_coef);
        check(cudaGetLastError(), "adam_kernel launch");
      });
}

template <class P, class S, bool MASTER>
void launch_adam(const std::vector<const Param*>& ts, const Hyper& h, const float* clip_coef, bool amsgrad,
                 cudaStream_t stream) {
  if (ts.empty()) return;
  amsgrad ? launch_adam<P, S, MASTER, true>(ts, h, clip_coef, stream)
          : launch_adam<P, S, MASTER, false>(ts, h, clip_coef, stream);
}

}  // namespace

void adam_step_cuda(const Param* params, int n, const Hyper& h, const float* clip_coef, bool amsgrad,
                    CUstream_st* stream) {
  // One group of launches per storage kind; states are fp32 with a master copy or for fp32 params.
  std::vector<const Param*> kinds[5];
  for (int i = 0; i < n; ++i) {
    const Param& t = params[i];
    const int kind = t.param_dtype == DType::f32 ? 0 : t.param_dtype == DType::bf16 ? (t.master ? 1 : 2)
                                                                                     : (t.master ? 3 : 4);
    kinds[kind].push_back(&t);
  }
  launch_adam<float, float, false>(kinds[0], h, clip_coef, amsgrad, stream);
  launch_adam<bf16, float, true>(kinds[1], h, clip_coef, amsgrad, stream);
  launch_adam<bf16, bf16, false>(kinds[2], h, clip_coef, amsgrad, stream);
  launch_adam<f16, float, true>(kinds[3], h, clip_coef, amsgrad, stream);
  launch_adam<f16, f16, false>(kinds[4], h, clip_coef, amsgrad, stream);
}

int64_t l2_norm_cuda_workspace(const Span* tensors, int n) {
  int64_t blocks = 0;
  for (int i = 0; i < n; ++i) blocks += (tensors[i].numel + kCudaChunk - 1) / kCudaChunk;
  return blocks;
}

void l2_norm_cuda(const Span* tensors, int n, float* workspace, float* out, CUstream_st* stream) {
  int64_t first_block = 0;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    std::vector<const Span*> ts;
    std::vector<int64_t> numels;
    for (int i = 0; i < n; ++i)
      if (tensors[i].dtype == dtype) ts.push_back(&tensors[i]), numels.push_back(tensors[i].numel);
    plan_launches<kMaxTensors, kMaxBlocks>(
        numels.data(), int(numels.size()), kCudaChunk,
        [&](const int* ids, int nt, const uint8_t* slot, const int32_t* chunk, int nb) {
          NormLaunch a{};
          for (int k = 0; k < nt; ++k) a.data[k] = ts[ids[k]]->data, a.numel[k] = ts[ids[k]]->numel;
          for (int b = 0; b < nb; ++b) a.block_slot[b] = slot[b], a.block_chunk[b] = chunk[b];
          if (dtype == DType::f32) sum_squares_kernel<float><<<nb, kThreads, 0, stream>>>(a, workspace, first_block);
          if (dtype == DType::bf16) sum_squares_kernel<bf16><<<nb, kThreads, 0, stream>>>(a, workspace, first_block);
          if (dtype == DType::f16) sum_squares_kernel<f16><<<nb, kThreads, 0, stream>>>(a, workspace, first_block);
          check(cudaGetLastError(), "sum_squares_kernel launch");
          first_block += nb;
        });
  }
  finish_norm_kernel<<<1, kThreads, 0, stream>>>(workspace, first_block, out);
  check(cudaGetLastError(), "finish_norm_kernel launch");
}

}  // namespace fastbert::adam
