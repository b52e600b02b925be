// (No include guard: included by kernel headers, once per instruction set.) The LayerNorm math of one fp32
// row, shared by the add & norm kernels (cpu/layer_norm_kernels.h) and the embedding kernels.

// Mean and 1 / sqrt(var + eps) of row[0 .. n).
inline void row_moments(const float* row, int64_t n, float eps, float& mean, float& rstd) {
  F sum = zero();
  for (int64_t j = 0; j < n; j += W) sum = sum + keep_only(first_lanes(n - j), load(row + j));
  mean = reduce_add(sum) / n;
  F sq = zero();
  for (int64_t j = 0; j < n; j += W) {
    const F d = keep_only(first_lanes(n - j), load(row + j) - set1(mean));
    sq = fma(d, d, sq);
  }
  rstd = 1.0f / std::sqrt(reduce_add(sq) / n + eps);
}

// One row's LayerNorm backward from g = dL/d(out) and the pre-norm h:
//   dh = rstd (g w - mean(g w) - xhat mean(g w xhat)),  xhat = (h - mean) rstd,
// adding g xhat and g to the column sums gw, gb (round_up(n, W) floats); emit(j, dh) takes lanes j .. j + W.
template <class G, class H, class Emit>
inline void row_backward(const G* g, const H* h, const float* weight, float mean, float rstd, int64_t n, float* gw,
                         float* gb, Emit&& emit) {
  const F mu = set1(mean), rs = set1(rstd);
  F s_gwx = zero(), s_gw = zero();
  for (int64_t j = 0; j < n; j += W) {  // lanes past n load g = 0 and add nothing
    const F go = load(g + j, n - j), xhat = (load(h + j, n - j) - mu) * rs, gwv = go * load(weight + j, n - j);
    s_gwx = fma(gwv, xhat, s_gwx);
    s_gw = s_gw + gwv;
    store(gw + j, fma(go, xhat, load(gw + j)));
    store(gb + j, load(gb + j) + go);
  }
  const F c_x = set1(reduce_add(s_gwx) / n), c = set1(reduce_add(s_gw) / n);
  for (int64_t j = 0; j < n; j += W) {
    const F go = load(g + j, n - j), xhat = (load(h + j, n - j) - mu) * rs;
    emit(j, rs * (go * load(weight + j, n - j) - c - xhat * c_x));
  }
}
