// Shared by the CPU (adam.cpp) and CUDA (cuda_adam.cpp) bindings of fastbert_C::adam_step and
// fastbert_C::multi_tensor_l2_norm: checks the tensor lists, counts the steps, and describes the tensors to
// the torch-free core (csrc/adam.h) as raw pointers with element i of every tensor of a parameter at offset i.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

#include <utility>
#include <vector>

#include "adam.h"

namespace fastbert::bindings {

inline adam::DType dtype_of(const at::Tensor& t, const char* what) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, "fastbert adam: ", what, " has dtype ", s,
              "; expected float32, bfloat16 or float16");
  return s == at::kFloat ? adam::DType::f32 : s == at::kBFloat16 ? adam::DType::bf16 : adam::DType::f16;
}

// Raw pointers to tensors, through temporaries laid out like `like` where a tensor is not (copied back by
// finish() for tensors the kernel writes).
class Pointers {
 public:
  void* get(const at::Tensor& t, const at::Tensor& like, bool written) {
    const bool dense = like.is_non_overlapping_and_dense();
    if (dense ? t.is_non_overlapping_and_dense() && t.strides() == like.strides() : t.is_contiguous())
      return t.data_ptr();
    at::Tensor tmp = dense ? at::empty_strided(like.sizes(), like.strides(), t.options())
                           : at::empty(like.sizes(), t.options());
    tmp.copy_(t);
    temporaries_.emplace_back(written ? t : at::Tensor(), tmp);
    return tmp.data_ptr();
  }
  void finish() {
    for (auto& [orig, tmp] : temporaries_)
      if (orig.defined()) orig.copy_(tmp);
    temporaries_.clear();
  }

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> temporaries_;
};

// One adam_step call: lists of equal length (max_exp_avg_sqs: empty unless amsgrad; master_params: empty,
// or fp32 master copies of bf16/fp16 params). Increments every step (CPU fp32 scalars, as torch keeps them).
inline std::vector<adam::Param> adam_params(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                            at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                                            at::TensorList master_params, at::TensorList steps, double lr,
                                            double beta1, double beta2, Pointers& ptrs) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n &&
                  (max_exp_avg_sqs.empty() || max_exp_avg_sqs.size() == n) &&
                  (master_params.empty() || master_params.size() == n),
              "fastbert adam: the tensor lists differ in length");
  const bool amsgrad = !max_exp_avg_sqs.empty(), master = !master_params.empty();
  for (size_t i = 0; i < n; ++i) {  // check everything before any step is counted
    const at::Tensor& p = params[i];
    const adam::DType dtype = dtype_of(p, "a parameter");
    TORCH_CHECK(p.device() == params[0].device(), "fastbert adam: parameters on ", params[0].device(), " and ",
                p.device());
    TORCH_CHECK(grads[i].layout() == at::kStrided, "fastbert adam: sparse gradients are not supported");
    TORCH_CHECK(!master || dtype != adam::DType::f32, "fastbert adam: an fp32 parameter was given a master copy");
    const at::ScalarType state_dtype = master ? at::kFloat : p.scalar_type();
    auto check = [&](const at::Tensor& t, at::ScalarType want, const char* what) {
      TORCH_CHECK(t.scalar_type() == want && t.device() == p.device() && t.sizes() == p.sizes(), "fastbert adam: ",
                  what, " ", t.scalar_type(), t.sizes(), " on ", t.device(), " does not match its parameter ",
                  p.scalar_type(), p.sizes(), " on ", p.device(), " (expected dtype ", want, ")");
    };
    check(grads[i], p.scalar_type(), "gradient");
    check(exp_avgs[i], state_dtype, "exp_avg");
    check(exp_avg_sqs[i], state_dtype, "exp_avg_sq");
    if (amsgrad) check(max_exp_avg_sqs[i], state_dtype, "max_exp_avg_sq");
    if (master) check(master_params[i], at::kFloat, "master_param");
    TORCH_CHECK(steps[i].device().is_cpu() && steps[i].scalar_type() == at::kFloat && steps[i].numel() == 1,
                "fastbert adam: steps must be one-element float32 CPU tensors");
  }
  std::vector<adam::Param> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const float step = *steps[i].data_ptr<float>() += 1.0f;
    if (p.numel() == 0) continue;
    out.push_back({ptrs.get(p, p, true), ptrs.get(grads[i], p, false), ptrs.get(exp_avgs[i], p, true),
                   ptrs.get(exp_avg_sqs[i], p, true), amsgrad ? ptrs.get(max_exp_avg_sqs[i], p, true) : nullptr,
                   master ? static_cast<float*>(ptrs.get(master_params[i], p, true)) : nullptr, p.numel(),
                   dtype_of(p, "a parameter"), adam::make_step_coeffs(lr, beta1, beta2, step)});
  }
  return out;
}

inline std::vector<adam::Span> spans(at::TensorList tensors, Pointers& ptrs) {
  std::vector<adam::Span> out;
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(t.layout() == at::kStrided, "fastbert multi_tensor_l2_norm: sparse tensors are not supported");
    TORCH_CHECK(t.device() == tensors[0].device(), "fastbert multi_tensor_l2_norm: tensors on ", t.device(), " and ",
                tensors[0].device());
    const adam::DType dtype = dtype_of(t, "a tensor");
    if (t.numel()) out.push_back({ptrs.get(t, t, false), t.numel(), dtype});  // a norm takes any dense order
  }
  return out;
}

}  // namespace fastbert::bindings
