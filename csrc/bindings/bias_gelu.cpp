// torch.ops.fastbert_C.bias_gelu_forward / _backward on CPU (contract: fastbert/ops/bias_gelu.py).
#include <string>

#include "bindings/common.h"
#include "cpu/bias_gelu.h"

namespace fastbert::bindings {
namespace {

// Checks x [rows, n] (and bias [n] or empty); returns bias as fp32 (undefined when empty).
at::Tensor check_args(const char* op, const at::Tensor& x, const at::Tensor& bias, const std::string& approximate) {
  check_float(op, "x", x);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [rows, n], got shape ", x.sizes());
  check_contiguous(op, "x", x);
  TORCH_CHECK(approximate == "none" || approximate == "tanh", op, ": approximate must be 'none' or 'tanh', got '",
              approximate, "'");
  return bias.numel() ? vector_f32(op, "bias", bias, x.size(1)) : at::Tensor();
}

at::Tensor bias_gelu_forward(const at::Tensor& x, const at::Tensor& bias, const std::string& approximate) {
  const char* op = "bias_gelu_forward";
  const at::Tensor b = check_args(op, x, bias, approximate);
  at::Tensor out = at::empty_like(x);
  dispatch_float(op, x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    cpu::bias_gelu_forward(cpu::BiasGeluArgs<T>{ptr<T>(x), b.defined() ? ptr<float>(b) : nullptr, nullptr, ptr<T>(out),
                                                nullptr, x.size(0), x.size(1), approximate == "tanh"});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& bias, const std::string& approximate) {
  const char* op = "bias_gelu_backward";
  const at::Tensor b = check_args(op, x, bias, approximate);
  check_cpu(op, "grad_out", grad_out);
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out has dtype ", grad_out.scalar_type(),
              "; expected x's dtype ", x.scalar_type());
  check_shape(op, "grad_out", grad_out, x.sizes());
  const at::Tensor g = grad_out.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_bias = b.defined() ? at::empty({x.size(1)}, x.options().dtype(at::kFloat))
                                     : x.new_empty({0}, x.options().dtype(at::kFloat));
  dispatch_float(op, x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    cpu::bias_gelu_backward(cpu::BiasGeluArgs<T>{ptr<T>(x), b.defined() ? ptr<float>(b) : nullptr, ptr<T>(g),
                                                 ptr<T>(grad_x), b.defined() ? ptr<float>(grad_bias) : nullptr,
                                                 x.size(0), x.size(1), approximate == "tanh"});
  });
  return {grad_x, grad_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastbert_C, m) {
  m.def("bias_gelu_forward(Tensor x, Tensor bias, str approximate) -> Tensor");
  m.def("bias_gelu_backward(Tensor grad_out, Tensor x, Tensor bias, str approximate) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbert_C, CPU, m) {
  m.impl("bias_gelu_forward", &bias_gelu_forward);
  m.impl("bias_gelu_backward", &bias_gelu_backward);
}

}  // namespace fastbert::bindings
