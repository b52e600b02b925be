// torch.ops.fastbert_C.attention[_varlen]_forward / _backward on CPU (contract: fastbert/ops/attention.py).
#include "bindings/common.h"
#include "cpu/attention.h"

namespace fastbert::bindings {
namespace {

// The longest sequence the Philox attention index can address: q and k take 16 bits each.
constexpr int64_t kMaxLen = 1 << 16;

void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t dim) {
  check_float(op, "q", q);
  TORCH_CHECK(q.dim() == dim, op, ": q must have ", dim, " dimensions, got shape ", q.sizes());
  for (const auto& [name, t] : {std::pair{"q", q}, std::pair{"k", k}, std::pair{"v", v}}) {
    check_cpu(op, name, t);
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), "; expected ",
                q.scalar_type());
    check_shape(op, name, t, q.sizes());
    TORCH_CHECK(t.stride(-1) == 1, op, ": ", name, " needs unit stride on the head dimension, got strides ",
                t.strides());
  }
}

// A [.., H, D] tensor as kernel rows: padded [B, S, H, D] (seq stride > 0) or packed [T, H, D].
template <class P>
cpu::Rows<P> rows(const at::Tensor& t) {
  auto* data = reinterpret_cast<P*>(t.data_ptr());
  if (t.dim() == 4) return {data, t.stride(0), t.stride(1), t.stride(2)};
  return {data, 0, t.stride(0), t.stride(1)};
}

at::Tensor unit_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

void check_seqlens(const char* op, const at::Tensor& seqlens, int64_t batch, int64_t S) {
  check_cpu(op, "seqlens", seqlens);
  TORCH_CHECK(seqlens.scalar_type() == at::kInt, op, ": seqlens must be int32, got ", seqlens.scalar_type());
  check_shape(op, "seqlens", seqlens, {batch});
  TORCH_CHECK(S <= kMaxLen, op, ": sequences longer than ", kMaxLen, " tokens are not supported, got ", S);
  const at::Tensor lens = seqlens.contiguous();
  const auto* len = lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(len[b] >= 0 && len[b] <= S, op, ": seqlens must lie in [0, ", S, "], got ", len[b]);
}

void check_cu_seqlens(const char* op, const at::Tensor& cu, int64_t total) {
  check_cpu(op, "cu_seqlens", cu);
  TORCH_CHECK(cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.numel() >= 1, op,
              ": cu_seqlens must be a 1-D int32 tensor with at least one entry, got ", cu.scalar_type(), " ",
              cu.sizes());
  const at::Tensor cc = cu.contiguous();
  const auto* c = cc.data_ptr<int32_t>();
  TORCH_CHECK(c[0] == 0 && c[cu.numel() - 1] == total, op, ": cu_seqlens must rise from 0 to total_tokens=", total);
  for (int64_t b = 0; b + 1 < cu.numel(); ++b)
    TORCH_CHECK(c[b + 1] >= c[b] && c[b + 1] - c[b] <= kMaxLen, op,
                ": cu_seqlens must not decrease, with every length at most ", kMaxLen);
}

// Runs the kernel; padded when seqlens is defined, else packed by cu_seqlens.
void run(bool backward, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
         const at::Tensor& grad_out, const at::Tensor& result, const at::Tensor& dk, const at::Tensor& dv,
         const at::Tensor& lse, const at::Tensor& seqlens, const at::Tensor& cu_seqlens, double scale, double dropout_p,
         int64_t seed, const std::optional<at::Tensor>& keys) {
  const bool padded = seqlens.defined();
  const int64_t H = q.size(-2), D = q.size(-1), batch = padded ? q.size(0) : cu_seqlens.numel() - 1;
  const at::Tensor k_ = dropout_keys(backward ? "attention_backward" : "attention_forward", keys, batch);
  dispatch_float(backward ? "attention_backward" : "attention_forward", q.scalar_type(), [&](auto t) {
    using T = decltype(t);
    auto opt = [](const at::Tensor& x) { return x.defined() ? rows<T>(x) : cpu::Rows<T>{nullptr, 0, 0, 0}; };
    auto copt = [](const at::Tensor& x) {
      return x.defined() ? rows<const T>(x) : cpu::Rows<const T>{nullptr, 0, 0, 0};
    };
    const cpu::AttentionArgs<T> args{
        rows<const T>(q), rows<const T>(k), rows<const T>(v), copt(out), copt(grad_out), rows<T>(result), opt(dk),
        opt(dv), lse.data_ptr<float>(), padded ? H * q.size(1) : 0, padded ? q.size(1) : lse.size(1),
        padded ? seqlens.data_ptr<int32_t>() : nullptr, padded ? nullptr : cu_seqlens.data_ptr<int32_t>(),
        batch, padded ? q.size(1) : 0, H, D, static_cast<float>(scale), dropout_p, static_cast<uint64_t>(seed),
        keys_ptr(k_)};
    backward ? cpu::attention_backward(args) : cpu::attention_forward(args);
  });
}

void check_dropout(const char* op, double p) {
  TORCH_CHECK(p >= 0 && p < 1, op, ": dropout_p must be in [0, 1), got ", p);
}

void check_saved(const char* op, const at::Tensor& q, const at::Tensor& grad_out, const at::Tensor& out,
                 const at::Tensor& lse, at::IntArrayRef lse_shape) {
  for (const auto& [name, t] : {std::pair{"grad_out", grad_out}, std::pair{"out", out}}) {
    check_cpu(op, name, t);
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), "; expected ",
                q.scalar_type());
    check_shape(op, name, t, q.sizes());
  }
  check_cpu(op, "lse", lse);
  TORCH_CHECK(lse.scalar_type() == at::kFloat, op, ": lse must be float32, got ", lse.scalar_type());
  check_shape(op, "lse", lse, lse_shape);
  check_contiguous(op, "lse", lse);
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& seqlens, double scale, double dropout_p,
                                                     int64_t seed, const std::optional<at::Tensor>& keys) {
  const char* op = "attention_forward";
  check_qkv(op, q, k, v, 4);
  check_dropout(op, dropout_p);
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2);
  check_seqlens(op, seqlens, B, S);
  at::Tensor out = at::empty(q.sizes(), q.options()), lse = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  run(false, q, k, v, {}, {}, out, {}, {}, lse, seqlens.contiguous(), {}, scale, dropout_p, seed, keys);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& seqlens, double scale, double dropout_p, int64_t seed,
    const std::optional<at::Tensor>& keys) {
  const char* op = "attention_backward";
  check_qkv(op, q, k, v, 4);
  check_dropout(op, dropout_p);
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2);
  check_seqlens(op, seqlens, B, S);
  check_saved(op, q, grad_out, out, lse, {B, H, S});
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty_like(dq), dv = at::empty_like(dq);
  run(true, q, k, v, unit_stride(out), unit_stride(grad_out), dq, dk, dv, lse, seqlens.contiguous(), {}, scale,
      dropout_p, seed, keys);
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor> attention_varlen_forward(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, const at::Tensor& cu_seqlens,
                                                            int64_t max_seqlen, double scale, double dropout_p,
                                                            int64_t seed, const std::optional<at::Tensor>& keys) {
  const char* op = "attention_varlen_forward";
  check_qkv(op, q, k, v, 3);
  check_dropout(op, dropout_p);
  check_cu_seqlens(op, cu_seqlens, q.size(0));
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  run(false, q, k, v, {}, {}, out, {}, {}, lse, {}, cu_seqlens.contiguous(), scale, dropout_p, seed, keys);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_varlen_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens, int64_t max_seqlen, double scale, double dropout_p,
    int64_t seed, const std::optional<at::Tensor>& keys) {
  const char* op = "attention_varlen_backward";
  check_qkv(op, q, k, v, 3);
  check_dropout(op, dropout_p);
  check_cu_seqlens(op, cu_seqlens, q.size(0));
  check_saved(op, q, grad_out, out, lse, {q.size(1), q.size(0)});
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty_like(dq), dv = at::empty_like(dq);
  run(true, q, k, v, unit_stride(out), unit_stride(grad_out), dq, dk, dv, lse, {}, cu_seqlens.contiguous(), scale,
      dropout_p, seed, keys);
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastbert_C, m) {
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor seqlens, float scale, float dropout_p, int seed, "
        "Tensor? keys) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor seqlens, "
        "float scale, float dropout_p, int seed, Tensor? keys) -> (Tensor, Tensor, Tensor)");
  m.def("attention_varlen_forward(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, float scale, "
        "float dropout_p, int seed, Tensor? keys) -> (Tensor, Tensor)");
  m.def("attention_varlen_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor cu_seqlens, int max_seqlen, float scale, float dropout_p, int seed, Tensor? keys) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbert_C, CPU, m) {
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_backward", &attention_backward);
  m.impl("attention_varlen_forward", &attention_varlen_forward);
  m.impl("attention_varlen_backward", &attention_varlen_backward);
}

}  // namespace fastbert::bindings
