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
    const uint16_t* bits =
        a.dropout_p > 0 ? dropout_bits(a.seed, philox::key_of(a.keys, r) * n, n, bits_buf.get()) : nullptr;
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
    const uint16_t* bits =
        a.dropout_p > 0 ? dropout_bits(a.seed, philox::key_of(a.keys, r) * n, n, bits_buf.get()) : nullptr;
    for (int64_t j = 0; j < n; j += W) {  // the gradient at the norm's output: through the dropout
      const F go = load(a.grad_out + r * n + j, n - j);
      store(g.get() + j, bits ? keep_only(keep(bits + j, threshold), go * scale) : go);
    }
    row_backward(g.get(), h.get(), a.weight, a.mean[r], a.rstd[r], n, gw, gb,
                 [&](int64_t j, F d) { store(dh + r * n + j, d, n - j); });
  }
}

// The rows of d(loss)/d(sum) that hit one table row, summed in token order into the row of their first
// token: sums[first[id]] = sum of dh[r] over r with ids[r] = id. A thread handles the ids it owns
// (id % threads == thread), so no two threads touch one table row; first[] starts at -1.
inline void sum_rows_by_id(const int64_t* ids, int64_t rows, const float* dh, int64_t n, int64_t* first, float* sums,
                           int64_t thread, int64_t threads) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t id = ids[r];
    if (id % threads != thread) continue;
    if (first[id] < 0) {
      first[id] = r;
      std::memcpy(sums + r * n, dh + r * n, n * sizeof(float));
      continue;
    }
    float* dst = sums + first[id] * n;
    for (int64_t j = 0; j < n; j += W) store(dst + j, load(dst + j, n - j) + load(dh + r * n + j, n - j), n - j);
  }
}

// Table rows id0 .. id1 - 1 of the gradient: the summed rows, zeros where no token (or the skipped row).
template <class T>
void write_table_grad(const int64_t* first, const float* sums, int64_t n, int64_t id0, int64_t id1, int64_t skip,
                      T* grad) {
  for (int64_t id = id0; id < id1; ++id) {
    const float* src = first[id] >= 0 && id != skip ? sums + first[id] * n : nullptr;
    for (int64_t j = 0; j < n; j += W) store(grad + id * n + j, src ? load(src + j, n - j) : zero(), n - j);
  }
}
