// (Compiled once per instruction set by cpu/for_each_isa.h.) Embedding sum + LayerNorm + dropout, a row at
// a time; the backward recomputes the sum from the tables instead of saving it.
#include "cpu/norm_rows.h"

template <class T>
inline void embedding_sum_row(const EmbeddingLayerNormArgs<T>& a, int64_t r, float* row) {
  const int64_t n = a.n;
  const T *w = a.word + a.input_ids[r] * n, *t = a.token_type + a.token_type_ids[r] * n,
          *p = a.position + a.position_ids[r] * n;
  for (int64_t j = 0; j < n; j += W) store(row + j, load(w + j, n - j) + load(t + j, n - j) + load(p + j, n - j));
}

template <class T>
void embedding_layer_norm_forward_rows(const EmbeddingLayerNormArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t n = a.n;
  Scratch<float> buf(round_up(n, W));
  Scratch<uint16_t> bits_buf(dropout_bits_size(n));
  const uint32_t threshold = philox::threshold(a.dropout_p);
  const float scale = static_cast<float>(1.0 / (1.0 - a.dropout_p));
  for (int64_t r = r0; r < r1; ++r) {
    embedding_sum_row(a, r, buf.get());
    float mean, rstd;
    row_moments(buf.get(), n, a.eps, mean, rstd);
    const uint16_t* bits = a.dropout_p > 0 ? dropout_bits(a.seed, r * n, n, bits_buf.get()) : nullptr;
    for (int64_t j = 0; j < n; j += W) {
      F y = fma((load(buf.get() + j) - set1(mean)) * set1(rstd), load(a.weight + j, n - j), load(a.bias + j, n - j));
      if (bits) y = keep_only(keep(bits + j, threshold), y * set1(scale));
      store(a.out + r * n + j, y, n - j);
    }
    a.mean[r] = mean;
    a.rstd[r] = rstd;
  }
}

// dh[r] = d(loss)/d(sum) of rows r0 .. r1 - 1 (fp32 [rows, n]); column sums added to gw, gb.
template <class T>
void embedding_layer_norm_backward_rows(const EmbeddingLayerNormArgs<T>& a, int64_t r0, int64_t r1, float* dh,
                                        float* gw, float* gb) {
  const int64_t n = a.n;
  Scratch<float> h(round_up(n, W)), g(round_up(n, W));
  Scratch<uint16_t> bits_buf(dropout_bits_size(n));
  const uint32_t threshold = philox::threshold(a.dropout_p);
  const F scale = set1(static_cast<float>(1.0 / (1.0 - a.dropout_p)));
  for (int64_t r = r0; r < r1; ++r) {
    embedding_sum_row(a, r, h.get());
    const uint16_t* bits = a.dropout_p > 0 ? dropout_bits(a.seed, r * n, n, bits_buf.get()) : nullptr;
    for (int64_t j = 0; j < n; j += W) {  // the gradient at the norm's output: through the dropout
      const F go = load(a.grad_out + r * n + j, n - j);
      store(g.get() + j, bits ? keep_only(keep(bits + j, threshold), go * scale) : go);
    }
    row_backward(g.get(), h.get(), a.weight, a.mean[r], a.rstd[r], n, gw, gb,
                 [&](int64_t j, F d) { store(dh + r * n + j, d, n - j); });
  }
}

// grad[ids[r]] += dh[r] for the rows whose table row this thread owns (id % threads == thread): no two
// threads touch one table row, and each row's sum runs in token order (deterministic).
inline void scatter_add_rows(const int64_t* ids, int64_t rows, const float* dh, int64_t n, float* grad, int64_t skip,
                             int64_t thread, int64_t threads) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t id = ids[r];
    if (id % threads != thread || id == skip) continue;
    float* dst = grad + id * n;
    for (int64_t j = 0; j < n; j += W) store(dst + j, load(dst + j, n - j) + load(dh + r * n + j, n - j), n - j);
  }
}
