// torch.ops.fastbert_C.embedding_layer_norm_forward / _backward on CPU (contract: fastbert/ops/embedding.py).
#include "bindings/common.h"
#include "cpu/embedding.h"

namespace fastbert::bindings {
namespace {

// Token indices as contiguous int64, checked to lie inside a table of `rows` rows.
at::Tensor indices(const char* op, const char* name, const at::Tensor& ids, int64_t tokens, int64_t rows) {
  check_cpu(op, name, ids);
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, op, ": ", name,
              " must be an int64 or int32 tensor, got ", ids.scalar_type());
  check_shape(op, name, ids, {tokens});
  at::Tensor out = ids.to(at::kLong).contiguous();
  if (tokens) {
    const int64_t lo = out.min().item<int64_t>(), hi = out.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < rows, op, ": ", name, " must lie in [0, ", rows, "), got values in [", lo, ", ", hi,
                "]");
  }
  return out;
}

void check_tables(const char* op, const at::Tensor& word, const at::Tensor& token_type, const at::Tensor& position) {
  for (const auto& [name, t] : {std::pair{"word", word}, std::pair{"token_type", token_type},
                                std::pair{"position", position}}) {
    check_float(op, name, t);
    TORCH_CHECK(t.dim() == 2 && t.size(1) == word.size(1), op, ": ", name, " must be a 2-D table with ", word.size(1),
                " columns, got shape ", t.sizes());
    TORCH_CHECK(t.scalar_type() == word.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                "; expected word's dtype ", word.scalar_type());
    check_contiguous(op, name, t);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> embedding_layer_norm_forward(
    const at::Tensor& input_ids, const at::Tensor& token_type_ids, const at::Tensor& position_ids,
    const at::Tensor& word, const at::Tensor& token_type, const at::Tensor& position, const at::Tensor& weight,
    const at::Tensor& bias, double eps, double dropout_p, int64_t seed, const std::optional<at::Tensor>& keys) {
  const char* op = "embedding_layer_norm_forward";
  check_tables(op, word, token_type, position);
  TORCH_CHECK(dropout_p >= 0 && dropout_p < 1, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  TORCH_CHECK(input_ids.dim() == 1, op, ": input_ids must be 1-D [tokens], got shape ", input_ids.sizes());
  const int64_t rows = input_ids.size(0), n = word.size(1);
  const at::Tensor ids = indices(op, "input_ids", input_ids, rows, word.size(0));
  const at::Tensor types = indices(op, "token_type_ids", token_type_ids, rows, token_type.size(0));
  const at::Tensor pos = indices(op, "position_ids", position_ids, rows, position.size(0));
  const at::Tensor w = vector_f32(op, "weight", weight, n), b = vector_f32(op, "bias", bias, n);
  const at::Tensor k = dropout_keys(op, keys, rows);
  at::Tensor out = at::empty({rows, n}, word.options());
  at::Tensor mean = at::empty({rows}, word.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  dispatch_float(op, word.scalar_type(), [&](auto t) {
    using T = decltype(t);
    cpu::EmbeddingLayerNormArgs<T> args{};
    args.input_ids = ids.data_ptr<int64_t>(), args.token_type_ids = types.data_ptr<int64_t>();
    args.position_ids = pos.data_ptr<int64_t>();
    args.word = ptr<T>(word), args.token_type = ptr<T>(token_type), args.position = ptr<T>(position);
    args.weight = ptr<float>(w), args.bias = ptr<float>(b), args.out = ptr<T>(out);
    args.mean = ptr<float>(mean), args.rstd = ptr<float>(rstd);
    args.rows = rows, args.n = n, args.eps = static_cast<float>(eps), args.dropout_p = dropout_p;
    args.seed = static_cast<uint64_t>(seed), args.keys = keys_ptr(k);
    cpu::embedding_layer_norm_forward(args);
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> embedding_layer_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input_ids, const at::Tensor& token_type_ids,
    const at::Tensor& position_ids, const at::Tensor& word, const at::Tensor& token_type, const at::Tensor& position,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd, double dropout_p, int64_t seed,
    const std::optional<at::Tensor>& keys, int64_t padding_idx) {
  const char* op = "embedding_layer_norm_backward";
  check_tables(op, word, token_type, position);
  TORCH_CHECK(input_ids.dim() == 1, op, ": input_ids must be 1-D [tokens], got shape ", input_ids.sizes());
  const int64_t rows = input_ids.size(0), n = word.size(1);
  const at::Tensor ids = indices(op, "input_ids", input_ids, rows, word.size(0));
  const at::Tensor types = indices(op, "token_type_ids", token_type_ids, rows, token_type.size(0));
  const at::Tensor pos = indices(op, "position_ids", position_ids, rows, position.size(0));
  check_cpu(op, "grad_out", grad_out);
  TORCH_CHECK(grad_out.scalar_type() == word.scalar_type(), op, ": grad_out has dtype ", grad_out.scalar_type(),
              "; expected the tables' dtype ", word.scalar_type());
  check_shape(op, "grad_out", grad_out, {rows, n});
  for (const auto& [name, t] : {std::pair{"mean", mean}, std::pair{"rstd", rstd}}) {
    check_cpu(op, name, t);
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
    check_shape(op, name, t, {rows});
  }
  const at::Tensor g = grad_out.contiguous(), w = vector_f32(op, "weight", weight, n);
  const at::Tensor mu = mean.contiguous(), rs = rstd.contiguous(), k = dropout_keys(op, keys, rows);
  const auto f32 = word.options().dtype(at::kFloat);
  at::Tensor grad_word = at::empty_like(word), grad_type = at::empty_like(token_type);
  at::Tensor grad_pos = at::empty_like(position), gw = at::empty({n}, f32), gb = at::empty({n}, f32);
  dispatch_float(op, word.scalar_type(), [&](auto t) {
    using T = decltype(t);
    cpu::EmbeddingLayerNormArgs<T> args{};
    args.input_ids = ids.data_ptr<int64_t>(), args.token_type_ids = types.data_ptr<int64_t>();
    args.position_ids = pos.data_ptr<int64_t>();
    args.word = ptr<T>(word), args.token_type = ptr<T>(token_type), args.position = ptr<T>(position);
    args.weight = ptr<float>(w), args.grad_out = ptr<T>(g), args.mean = ptr<float>(mu), args.rstd = ptr<float>(rs);
    args.grad_word = ptr<T>(grad_word), args.grad_token_type = ptr<T>(grad_type), args.grad_position = ptr<T>(grad_pos);
    args.grad_weight = ptr<float>(gw), args.grad_bias = ptr<float>(gb);
    args.vocab = word.size(0), args.types = token_type.size(0), args.positions = position.size(0);
    args.rows = rows, args.n = n, args.dropout_p = dropout_p, args.seed = static_cast<uint64_t>(seed);
    args.padding_idx = padding_idx, args.keys = keys_ptr(k);
    cpu::embedding_layer_norm_backward(args);
  });
  return {grad_word, grad_type, grad_pos, gw, gb};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastbert_C, m) {
  m.def("embedding_layer_norm_forward(Tensor input_ids, Tensor token_type_ids, Tensor position_ids, Tensor word, "
        "Tensor token_type, Tensor position, Tensor weight, Tensor bias, float eps, float dropout_p, int seed, "
        "Tensor? keys) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("embedding_layer_norm_backward(Tensor grad_out, Tensor input_ids, Tensor token_type_ids, "
        "Tensor position_ids, Tensor word, Tensor token_type, Tensor position, Tensor weight, Tensor mean, "
        "Tensor rstd, float dropout_p, int seed, Tensor? keys, int padding_idx) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbert_C, CPU, m) {
  m.impl("embedding_layer_norm_forward", &embedding_layer_norm_forward);
  m.impl("embedding_layer_norm_backward", &embedding_layer_norm_backward);
}

}  // namespace fastbert::bindings
