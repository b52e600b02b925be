// Fused Adam/AdamW with the semantics of torch.optim.Adam / AdamW: the per-element update shared by the
// CPU core (csrc/cpu/adam.cpp) and the CUDA kernels (csrc/cuda/adam.cu), and their torch-free entry points.
// No torch here: the torch ops live in csrc/bindings/{adam,cuda_adam}.cpp.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define FASTBERT_HD __host__ __device__ __forceinline__
#else
#define FASTBERT_HD inline __attribute__((always_inline))
#endif

namespace fastbert::adam {

// Storage dtypes of parameters, gradients and optimizer states; all arithmetic is fp32.
enum class DType : int8_t { f32, bf16, f16 };
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

FASTBERT_HD float bf16_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

FASTBERT_HD uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t u;
  memcpy(&u, &f, 4);
  u = f != f ? 0x7fc00000u : u + 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// A product rounded on its own, never fused into a later add (compilers contract a * b + c into an fma; torch
// rounds e.g. param.mul_(1 - lr * wd) before its next kernel). a * b - 0 is exactly a * b, sign of zero included.
FASTBERT_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return fmaf(a, b, -0.0f);
#endif
}

// Correctly rounded division and square root on both sides (nvcc's --use_fast_math would approximate them).
FASTBERT_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

FASTBERT_HD float sqrt_rn(float x) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(x);
#else
  return sqrtf(x);
#endif
}

// The scalars of one step shared by all parameters, rounded to fp32 where torch rounds its Python floats.
struct Hyper {
  float lerp_weight;       // exp_avg.lerp_(grad, 1 - beta1): weight 1 - beta1, or -beta1 when lerp_from_grad
  int32_t lerp_from_grad;  // 1: torch's lerp for weights >= 0.5, grad + (weight - 1) * (grad - exp_avg). Not a
                           // bool: GCC 12 does not vectorize loops that read a bool member.
  float beta2, one_minus_beta2, eps;
  float weight_decay;      // Adam's L2 penalty, added to the gradient; 0 for AdamW
  float decay;             // AdamW's decoupled decay factor 1 - lr * weight_decay; 1 for Adam
  float grad_sign;         // -1 to maximize
};

inline Hyper make_hyper(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                        bool maximize) {
  const float w = float(1.0 - beta1);
  const bool from_grad = !(w < 0.5f);
  return {from_grad ? w - 1.0f : w, from_grad, float(beta2), float(1.0 - beta2), float(eps),
          decoupled ? 0.0f : float(weight_decay), decoupled ? float(1.0 - lr * weight_decay) : 1.0f,
          maximize ? -1.0f : 1.0f};
}

// The bias corrections of a parameter at its step count `step` (already incremented), in double as torch
// computes them from Python floats: step_size = lr / (1 - beta1^step), sqrt(1 - beta2^step).
struct StepCoeffs { float neg_step_size, bias_correction2_sqrt; };

inline StepCoeffs make_step_coeffs(double lr, double beta1, double beta2, double step) {
  const double bias_correction1 = 1.0 - pow(beta1, step), bias_correction2 = 1.0 - pow(beta2, step);
  return {float(-(lr / bias_correction1)), float(pow(bias_correction2, 0.5))};
}

// One element, in the order of torch's single-tensor Adam:
//   g = clip * (-grad if maximize else grad);  g += wd * p (Adam) | p *= 1 - lr * wd (AdamW)
//   m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g;  v_max = max(v_max, v) (amsgrad)
//   p += -step_size * m / (sqrt(v or v_max) / sqrt(1 - beta2^t) + eps)
// grad_scale is the clip coefficient times grad_sign; v_max is only touched with AMSGRAD.
template <bool AMSGRAD>
FASTBERT_HD void adam_update(float& p, float g, float& m, float& v, float* v_max, const Hyper& h, float grad_scale,
                             StepCoeffs c) {
  g = mul_rn(g, grad_scale);
  if (h.weight_decay != 0.0f) g = fmaf(p, h.weight_decay, g);
  p = mul_rn(p, h.decay);
  m = fmaf(h.lerp_weight, g - m, h.lerp_from_grad ? g : m);
  v = fmaf(mul_rn(h.one_minus_beta2, g), g, mul_rn(v, h.beta2));
  float vhat = v;
  if (AMSGRAD) {
    vhat = *v_max > v || *v_max != *v_max ? *v_max : v;  // torch.maximum: NaN wins
    *v_max = vhat;
  }
  const float denom = div_rn(sqrt_rn(vhat), c.bias_correction2_sqrt) + h.eps;
  p = p + div_rn(c.neg_step_size * m, denom);
}

// One parameter: its tensors as raw pointers, element i of each at the same offset i.
struct Param {
  void* param;
  const void* grad;      // param's dtype
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;  // amsgrad only, else null
  float* master;         // fp32 master copy of a bf16/fp16 param (updated, then rounded into param), or null
  int64_t numel;
  DType param_dtype;     // exp_avg, exp_avg_sq, max_exp_avg_sq: fp32 with a master copy, else param_dtype
  StepCoeffs coeffs;
};

struct Span { const void* data; int64_t numel; DType dtype; };

// ---- CPU (csrc/cpu/adam.cpp): OpenMP over chunks of all tensors, vectorized inner loop ----
enum class CpuIsa : int8_t { base, avx512 };  // base: the build's baseline (x86-64-v3 on x86)
CpuIsa best_cpu_isa();

// Updates every parameter; grad_scale: the clip coefficient (1 without clipping).
void adam_step_cpu(const Param* params, int n, const Hyper& h, float grad_scale, bool amsgrad,
                   CpuIsa isa = best_cpu_isa());
// sqrt of the sum of squares of all elements, accumulated in double.
double l2_norm_cpu(const Span* tensors, int n, CpuIsa isa = best_cpu_isa());

// ---- CUDA (csrc/cuda/adam.cu): multi-tensor apply, a few launches for all tensors ----
// clip_coef: device pointer to the clip coefficient, or null. Throw std::runtime_error on CUDA errors.
constexpr int64_t kCudaChunk = 65536;  // elements per CUDA block
void adam_step_cuda(const Param* params, int n, const Hyper& h, const float* clip_coef, bool amsgrad,
                    struct CUstream_st* stream);
int64_t l2_norm_cuda_workspace(const Span* tensors, int n);  // floats of scratch l2_norm_cuda needs
void l2_norm_cuda(const Span* tensors, int n, float* workspace, float* out, struct CUstream_st* stream);

// Multi-tensor apply plan (host): cut tensors into chunks of `chunk` elements and group the chunks into
// launches of at most MaxTensors tensors and MaxBlocks chunks; a tensor may continue into the next launch.
// emit(tensor_ids, n_tensors, block_slot, block_chunk, n_blocks): block b runs chunk block_chunk[b] of
// tensor tensor_ids[block_slot[b]].
template <int MaxTensors, int MaxBlocks, class Emit>
void plan_launches(const int64_t* numels, int n, int64_t chunk, Emit&& emit) {
  static_assert(MaxTensors <= 256, "block_slot is a uint8_t");
  int ids[MaxTensors];
  uint8_t slot[MaxBlocks];
  int32_t chunk_of[MaxBlocks];
  int nt = 0, nb = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t chunks = (numels[i] + chunk - 1) / chunk;
    if (chunks == 0) continue;
    if (nt == MaxTensors) {
      emit(ids, nt, slot, chunk_of, nb);
      nt = nb = 0;
    }
    ids[nt] = i;
    for (int64_t c = 0; c < chunks; ++c) {
      if (nb == MaxBlocks) {
        emit(ids, nt + 1, slot, chunk_of, nb);
        ids[0] = i;
        nt = nb = 0;
      }
      slot[nb] = uint8_t(nt);
      chunk_of[nb++] = int32_t(c);
    }
    ++nt;
  }
  if (nb) emit(ids, nt, slot, chunk_of, nb);
}

}  // namespace fastbert::adam
