// torch.ops.fastbert_C.layer_norm_forward / _backward on CPU (contract: fastbert/ops/layer_norm.py).
#include "bindings/common.h"
#include "cpu/layer_norm.h"

namespace fastbert::bindings {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& input_bias, double eps, double dropout_p, int64_t seed,
    const std::optional<at::Tensor>& keys) {
  const char* op = "layer_norm_forward";
  check_float(op, "x", x);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [rows, n], got shape ", x.sizes());
  check_contiguous(op, "x", x);
  TORCH_CHECK(dropout_p >= 0 && dropout_p < 1, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  const int64_t rows = x.size(0), n = x.size(1);
  const at::Tensor w = vector_f32(op, "weight", weight, n), b = vector_f32(op, "bias", bias, n);
  const at::Tensor ib = input_bias ? vector_f32(op, "input_bias", *input_bias, n) : at::Tensor();
  at::Tensor res;
  if (residual) {
    check_float(op, "residual", *residual);
    check_shape(op, "residual", *residual, x.sizes());
    // the kernels read a residual in x's dtype or fp32
    res = residual->scalar_type() == x.scalar_type() ? residual->contiguous() : residual->to(at::kFloat).contiguous();
  }
  const at::Tensor k = dropout_keys(op, keys, rows);
  const bool keep_h = residual || input_bias || dropout_p > 0;
  at::Tensor out = at::empty_like(x), h = keep_h ? at::empty_like(x) : x.new_empty({0});
  at::Tensor mean = x.new_empty({rows}, x.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  dispatch_float(op, x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    auto run = [&](auto r) {
      using R = decltype(r);
      cpu::layer_norm_forward(cpu::LayerNormForward<T, R>{
          ptr<T>(x), res.defined() ? ptr<R>(res) : nullptr, ib.defined() ? ptr<float>(ib) : nullptr, ptr<float>(w),
          ptr<float>(b), ptr<T>(out), keep_h ? ptr<T>(h) : nullptr, ptr<float>(mean), ptr<float>(rstd), rows, n,
          static_cast<float>(eps), dropout_p, static_cast<uint64_t>(seed), keys_ptr(k)});
    };
    if (res.defined() && res.scalar_type() == at::kFloat) run(float{});
    else run(T{});
  });
  return {out, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& mean,
    const at::Tensor& rstd, double dropout_p, int64_t seed, const std::optional<at::Tensor>& keys,
    bool has_input_bias) {
  const char* op = "layer_norm_backward";
  check_float(op, "h", h);
  TORCH_CHECK(h.dim() == 2, op, ": h must be 2-D [rows, n], got shape ", h.sizes());
  check_contiguous(op, "h", h);
  const int64_t rows = h.size(0), n = h.size(1);
  check_cpu(op, "grad_out", grad_out);
  TORCH_CHECK(grad_out.scalar_type() == h.scalar_type(), op, ": grad_out has dtype ", grad_out.scalar_type(),
              "; expected h's dtype ", h.scalar_type());
  check_shape(op, "grad_out", grad_out, h.sizes());
  const at::Tensor g = grad_out.contiguous(), w = vector_f32(op, "weight", weight, n);
  for (const auto& [name, t] : {std::pair{"mean", mean}, std::pair{"rstd", rstd}}) {
    check_cpu(op, name, t);
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
    check_shape(op, name, t, {rows});
  }
  const at::Tensor mu = mean.contiguous(), rs = rstd.contiguous(), k = dropout_keys(op, keys, rows);
  at::Tensor grad_h = at::empty_like(h), grad_x = dropout_p > 0 ? at::empty_like(h) : h.new_empty({0});
  const auto f32 = h.options().dtype(at::kFloat);
  at::Tensor gw = at::empty({n}, f32), gb = at::empty({n}, f32);
  at::Tensor gib = has_input_bias ? at::empty({n}, f32) : h.new_empty({0});
  dispatch_float(op, h.scalar_type(), [&](auto t) {
    using T = decltype(t);
    cpu::layer_norm_backward(cpu::LayerNormBackward<T>{
        ptr<T>(g), ptr<T>(h), ptr<float>(w), ptr<float>(mu), ptr<float>(rs), ptr<T>(grad_h),
        dropout_p > 0 ? ptr<T>(grad_x) : nullptr, ptr<float>(gw), ptr<float>(gb),
        has_input_bias ? ptr<float>(gib) : nullptr, rows, n, dropout_p, static_cast<uint64_t>(seed), keys_ptr(k)});
  });
  return {grad_h, grad_x, gw, gb, gib};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastbert_C, m) {
  m.def("layer_norm_forward(Tensor x, Tensor weight, Tensor bias, Tensor? residual, Tensor? input_bias, float eps, "
        "float dropout_p, int seed, Tensor? keys) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("layer_norm_backward(Tensor grad_out, Tensor h, Tensor weight, Tensor mean, Tensor rstd, float dropout_p, "
        "int seed, Tensor? keys, bool has_input_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbert_C, CPU, m) {
  m.impl("layer_norm_forward", &layer_norm_forward);
  m.impl("layer_norm_backward", &layer_norm_backward);
}

}  // namespace fastbert::bindings
