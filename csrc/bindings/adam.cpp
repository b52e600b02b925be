// Torch ops of the fused Adam/AdamW (fastbert.optim): their schemas and CPU kernels (csrc/cpu/adam.cpp).
//   adam_step: one Adam/AdamW step for lists of parameters, torch.optim.Adam semantics (see csrc/adam.h)
//   multi_tensor_l2_norm: the global L2 norm of a list of tensors, as an fp32 scalar tensor
#include <torch/library.h>

#include "adam_args.h"

namespace fastbert::bindings {
namespace {

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList master_params, at::TensorList steps, double lr,
                   double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
                   bool maximize, const std::optional<at::Tensor>& clip_coef) {
  for (const at::Tensor& p : params) TORCH_CHECK(p.device().is_cpu(), "fastbert adam: a parameter is on ", p.device());
  float scale = 1.0f;
  if (clip_coef) {
    TORCH_CHECK(clip_coef->device().is_cpu() && clip_coef->scalar_type() == at::kFloat && clip_coef->numel() == 1,
                "fastbert adam: clip_coef must be a one-element float32 tensor on the parameters' device");
    scale = *clip_coef->data_ptr<float>();
  }
  Pointers ptrs;
  const std::vector<adam::Param> ps = adam_params(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                                  master_params, steps, lr, beta1, beta2, ptrs);
  adam::adam_step_cpu(ps.data(), int(ps.size()),
                      adam::make_hyper(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize), scale,
                      !max_exp_avg_sqs.empty());
  ptrs.finish();
}

at::Tensor l2_norm_cpu(at::TensorList tensors) {
  Pointers ptrs;
  const std::vector<adam::Span> ss = spans(tensors, ptrs);
  at::Tensor out = at::empty({}, at::kFloat);
  *out.data_ptr<float>() = float(adam::l2_norm_cpu(ss.data(), int(ss.size())));
  return out;
}

}  // namespace
}  // namespace fastbert::bindings

TORCH_LIBRARY_FRAGMENT(fastbert_C, m) {
  m.def("adam_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] master_params, Tensor(f!)[] steps, float lr, float beta1, "
        "float beta2, float eps, float weight_decay, bool decoupled_weight_decay, bool maximize, "
        "Tensor? clip_coef) -> ()");
  m.def("multi_tensor_l2_norm(Tensor[] tensors) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastbert_C, CPU, m) {
  m.impl("adam_step", &fastbert::bindings::adam_step_cpu);
  m.impl("multi_tensor_l2_norm", &fastbert::bindings::l2_norm_cpu);
}
