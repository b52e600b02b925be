// (Compiled once per instruction set by cpu/for_each_isa.h.) LayerNorm rows r0 .. r1 - 1, one row at a
// time in fp32: the pre-norm row lives in an L1-sized buffer, so x, residual, grad_out and h are read
// from memory once. Dropout bits come from Philox in the row-wise scheme (element key(r) * n + c).
#include "cpu/norm_rows.h"

template <class T, class R>
void layer_norm_forward_rows(const LayerNormForward<T, R>& a, int64_t r0, int64_t r1) {
  const int64_t n = a.n;
  Scratch<float> buf(round_up(n, W));
  Scratch<uint16_t> bits_buf(dropout_bits_size(n));
  float* hrow = buf.get();
  const uint32_t threshold = philox::threshold(a.dropout_p);
  const F scale = set1(static_cast<float>(1.0 / (1.0 - a.dropout_p)));
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = a.x + r * n;
    const uint16_t* bits =
        a.dropout_p > 0 ? dropout_bits(a.seed, philox::key_of(a.keys, r) * n, n, bits_buf.get()) : nullptr;
    for (int64_t j = 0; j < n; j += W) {  // h = dropout(x + input_bias) + residual
      F v = load(x + j, n - j);
      if (a.input_bias) v = v + load(a.input_bias + j, n - j);
      if (bits) v = keep_only(keep(bits + j, threshold), v * scale);
      if (a.residual) v = v + load(a.residual + r * n + j, n - j);
      store(hrow + j, v);
    }
    float mean, rstd;
    row_moments(hrow, n, a.eps, mean, rstd);
    for (int64_t j = 0; j < n; j += W) {
      const F h = load(hrow + j);
      const F y = fma((h - set1(mean)) * set1(rstd), load(a.weight + j, n - j), load(a.bias + j, n - j));
      store(a.out + r * n + j, y, n - j);
      if (a.h) store(a.h + r * n + j, h, n - j);
    }
    a.mean[r] = mean;
    a.rstd[r] = rstd;
  }
}

// grad_h, grad_x = dropout'(grad_h); column sums added to this thread's partials gw, gb, gib
// (round_up(n, W) floats each).
template <class T>
void layer_norm_backward_rows(const LayerNormBackward<T>& a, int64_t r0, int64_t r1, float* gw, float* gb,
                              float* gib) {
  const int64_t n = a.n;
  Scratch<uint16_t> bits_buf(dropout_bits_size(n));
  const uint32_t threshold = philox::threshold(a.dropout_p);
  const F scale = set1(static_cast<float>(1.0 / (1.0 - a.dropout_p)));
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* bits =
        a.grad_x ? dropout_bits(a.seed, philox::key_of(a.keys, r) * n, n, bits_buf.get()) : nullptr;
    row_backward(a.grad_out + r * n, a.h + r * n, a.weight, a.mean[r], a.rstd[r], n, gw, gb, [&](int64_t j, F dh) {
      store(a.grad_h + r * n + j, dh, n - j);
      if (bits) {
        dh = keep_only(keep(bits + j, threshold), dh * scale);
        store(a.grad_x + r * n + j, dh, n - j);
      }
      if (a.grad_input_bias) store(gib + j, load(gib + j) + keep_only(first_lanes(n - j), dh));
    });
  }
}
