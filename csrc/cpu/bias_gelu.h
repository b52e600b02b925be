// GELU(x + bias) over rows: the torch-free CPU kernels behind torch.ops.fastbert_C.bias_gelu_* (contract:
// fastbert/ops/bias_gelu.py). Arrays are contiguous, [rows, n] or [n]; T is the storage type of x, out and
// the gradients (float, bf16, f16). Exact GELU uses an erfc accurate to ~1e-7 relative (cpu/vec.h).
#pragma once
#include "cpu/simd.h"

namespace fastbert::cpu {

template <class T>
struct BiasGeluArgs {
  const T* x;
  const float* bias;         // [n] or null
  const T* grad_out;         // backward only
  T* out;                    // forward: GELU(x + bias); backward: grad_x
  float* grad_bias;          // backward: [n] column sums of grad_x, or null
  int64_t rows, n;
  bool tanh;                 // the tanh approximation instead of the exact erf form
};

template <class T>
void bias_gelu_forward(const BiasGeluArgs<T>& a);
template <class T>
void bias_gelu_backward(const BiasGeluArgs<T>& a);

}  // namespace fastbert::cpu
