// Helpers of the CPU bindings: argument checks that name the op and argument, and dtype dispatch.
#pragma once
#include <torch/extension.h>

#include "cpu/simd.h"

namespace fastbert::bindings {

inline void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device());
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  check_cpu(op, name, t);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              op, ": ", name, " has dtype ", t.scalar_type(), "; expected float32, bfloat16 or float16");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " has shape ", t.sizes(), "; expected ", shape);
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// A [n] parameter vector as contiguous fp32 (the kernels read parameters in fp32).
inline at::Tensor vector_f32(const char* op, const char* name, const at::Tensor& t, int64_t n) {
  check_float(op, name, t);
  check_shape(op, name, t, {n});
  return t.to(at::kFloat).contiguous();
}

// f(T{}) with T the kernel storage type of `dtype`: float, cpu::bf16 or cpu::f16.
template <class Fn>
void dispatch_float(const char* op, at::ScalarType dtype, Fn&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(cpu::bf16{});
    case at::kHalf: return f(cpu::f16{});
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

// The optional dropout keys of `count` rows (or sequences) as contiguous int64; undefined without keys.
inline at::Tensor dropout_keys(const char* op, const std::optional<at::Tensor>& keys, int64_t count) {
  if (!keys) return {};
  check_cpu(op, "keys", *keys);
  TORCH_CHECK(keys->scalar_type() == at::kLong, op, ": keys must be int64, got ", keys->scalar_type());
  check_shape(op, "keys", *keys, {count});
  return keys->contiguous();
}

inline const int64_t* keys_ptr(const at::Tensor& keys) { return keys.defined() ? keys.data_ptr<int64_t>() : nullptr; }

template <class T>
T* ptr(const at::Tensor& t) {
  return t.numel() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

}  // namespace fastbert::bindings
