// CUDA kernels (csrc/cuda/adam.cu) of the torch ops fastbert_C::adam_step and multi_tensor_l2_norm, whose
// schemas and CPU kernels are in adam.cpp. Built into fastbert._C_cuda only where torch has CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "adam_args.h"

namespace fastbert::bindings {
namespace {

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    at::TensorList max_exp_avg_sqs, at::TensorList master_params, at::TensorList steps, double lr,
                    double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
                    bool maximize, const std::optional<at::Tensor>& clip_coef) {
  TORCH_CHECK(params[0].is_cuda(), "fastbert adam: a parameter is on ", params[0].device());
  const c10::cuda::CUDAGuard guard(params[0].device());
  const float* clip = nullptr;
  if (clip_coef) {
    TORCH_CHECK(clip_coef->device() == params[0].device() && clip_coef->scalar_type() == at::kFloat &&
                    clip_coef->numel() == 1,
                "fastbert adam: clip_coef must be a one-element float32 tensor on the parameters' device");
    clip = clip_coef->data_ptr<float>();
  }
  Pointers ptrs;
  const std::vector<adam::Param> ps = adam_params(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                                  master_params, steps, lr, beta1, beta2, ptrs);
  adam::adam_step_cuda(ps.data(), int(ps.size()),
                       adam::make_hyper(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize), clip,
                       !max_exp_avg_sqs.empty(), c10::cuda::getCurrentCUDAStream());
  ptrs.finish();
}

at::Tensor l2_norm_cuda(at::TensorList tensors) {
  TORCH_CHECK(tensors[0].is_cuda(), "fastbert multi_tensor_l2_norm: a tensor is on ", tensors[0].device());
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  Pointers ptrs;
  const std::vector<adam::Span> ss = spans(tensors, ptrs);
  const auto opts = tensors[0].options().dtype(at::kFloat);
  at::Tensor workspace = at::empty({adam::l2_norm_cuda_workspace(ss.data(), int(ss.size()))}, opts);
  at::Tensor out = at::empty({}, opts);
  adam::l2_norm_cuda(ss.data(), int(ss.size()), workspace.data_ptr<float>(), out.data_ptr<float>(),
                     c10::cuda::getCurrentCUDAStream());
  return out;
}

}  // namespace
}  // namespace fastbert::bindings

TORCH_LIBRARY_IMPL(fastbert_C, CUDA, m) {
  m.impl("adam_step", &fastbert::bindings::adam_step_cuda);
  m.impl("multi_tensor_l2_norm", &fastbert::bindings::l2_norm_cuda);
}
