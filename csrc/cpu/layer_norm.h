// Fused add & LayerNorm over rows: the torch-free CPU kernels behind torch.ops.fastbert_C.layer_norm_*
// (contract: fastbert/ops/layer_norm.py). Arrays are contiguous, [rows, n] or [n]. T is the storage type
// of x, h, out and their gradients (float, bf16, f16); R that of the residual (T or float).
#pragma once
#include "cpu/simd.h"

namespace fastbert::cpu {

template <class T, class R>
struct LayerNormForward {
  const T* x;
  const R* residual;          // or null
  const float* input_bias;    // or null
  const float* weight;
  const float* bias;
  T* out;
  T* h;                       // the pre-norm sum dropout(x + input_bias) + residual, or null: not written
  float* mean;                // [rows]
  float* rstd;                // [rows]
  int64_t rows, n;
  float eps;
  double dropout_p;
  uint64_t seed;
  const int64_t* keys = nullptr;  // [rows] the rows' dropout keys (element key * n + col), or null: row indices
};

template <class T>
struct LayerNormBackward {
  const T* grad_out;
  const T* h;
  const float* weight;
  const float* mean;
  const float* rstd;
  T* grad_h;
  T* grad_x;                  // the dropout-masked grad_h; null without dropout
  float* grad_weight;         // [n]
  float* grad_bias;           // [n]
  float* grad_input_bias;     // [n] column sums of grad_x (grad_h without dropout), or null
  int64_t rows, n;
  double dropout_p;
  uint64_t seed;
  const int64_t* keys = nullptr;  // [rows] as in LayerNormForward
};

template <class T, class R>
void layer_norm_forward(const LayerNormForward<T, R>& a);
template <class T>
void layer_norm_backward(const LayerNormBackward<T>& a);

}  // namespace fastbert::cpu
