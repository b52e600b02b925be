// (Compiled once per instruction set by cpu/for_each_isa.h.) Attention of one (sequence, head) at a time:
// operands are packed to fp32 blocks in per-thread scratch, multiplied by a register-blocked kernel, and
// softmax / dropout run row by row on [kBlockQ, len] score tiles.

// C[m, 0:N] (+)= sum_k A(m, k) B[k, 0:N] for m < M, with A(m, k) = a[m * am + k * ak] (so A may be read
// transposed), B and C row-major (leading dimensions ldb, ldc), N a multiple of W. A tile of MR rows x NV
// vectors of C stays in registers while k runs.
template <int MR, int NV>
inline void gemm_tile(int64_t K, const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb, float* c,
                      int64_t ldc, bool accumulate) {
  F acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? load(c + r * ldc + v * W) : zero();
  for (int64_t k = 0; k < K; ++k) {
    F bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = load(b + k * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const F ar = set1(a[r * am + k * ak]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = fma(ar, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(c + r * ldc + v * W, acc[r][v]);
}

// The last M % MR rows in one tile of exactly that height (R < MR), so no row runs alone.
template <int R, int NV>
inline void gemm_rest(int64_t rest, int64_t K, const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb,
                      float* c, int64_t ldc, bool accumulate) {
  if constexpr (R > 0) {
    if (rest == R) return gemm_tile<R, NV>(K, a, am, ak, b, ldb, c, ldc, accumulate);
    gemm_rest<R - 1, NV>(rest, K, a, am, ak, b, ldb, c, ldc, accumulate);
  }
}

template <int NV>
inline void gemm_columns(int64_t M, int64_t K, const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb,
                         float* c, int64_t ldc, bool accumulate) {
  constexpr int MR = NV >= 3 ? 4 : (NV == 2 && W == 8 ? 4 : 8);  // MR * NV accumulators fit the register file
  int64_t m = 0;
  for (; m + MR <= M; m += MR) gemm_tile<MR, NV>(K, a + m * am, am, ak, b, ldb, c + m * ldc, ldc, accumulate);
  gemm_rest<MR - 1, NV>(M - m, K, a + m * am, am, ak, b, ldb, c + m * ldc, ldc, accumulate);
}

inline void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb,
                 float* c, int64_t ldc, bool accumulate) {
  for (int64_t n = 0; n < N;) {
    const int64_t nv = (N - n) / W;
    if constexpr (W == 16) {
      if (nv >= 4) {
        gemm_columns<4>(M, K, a, am, ak, b + n, ldb, c + n, ldc, accumulate);
        n += 4 * W;
        continue;
      }
      if (nv == 3) {
        gemm_columns<3>(M, K, a, am, ak, b + n, ldb, c + n, ldc, accumulate);
        n += 3 * W;
        continue;
      }
    }
    if (nv >= 2) {
      gemm_columns<2>(M, K, a, am, ak, b + n, ldb, c + n, ldc, accumulate);
      n += 2 * W;
    } else {
      gemm_columns<1>(M, K, a, am, ak, b + n, ldb, c + n, ldc, accumulate);
      n += W;
    }
  }
}

// rows x D elements (row stride tok) -> fp32 dst[r * ld + d] times scale; columns D .. ld - 1 zero.
template <class T>
void pack_rows(const T* src, int64_t tok, int64_t rows, int64_t D, float scale, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < ld; d += W) store(dst + r * ld + d, load(src + r * tok + d, D - d) * set1(scale));
}

// The transpose: dst[d * ld + j] = element d of row j (row stride tok), j < L; columns L .. round_up(L, W) zero.
template <class T>
void pack_transposed(const T* src, int64_t tok, int64_t L, int64_t D, float* dst, int64_t ld) {
  const I idx = lane_offsets(tok);
  for (int64_t j = 0; j < L; j += W) {
    const T* base = src + j * tok;
    const int64_t n = L - j;
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t d = 0; d < D; ++d) store(dst + d * ld + j, gather(base + d, idx, n));
    } else {  // 16-bit elements: one 32-bit gather fetches dims d and d + 1
      int64_t d = 0;
      for (; d + 1 < D; d += 2) {
        F even, odd;
        split_words(gather_words(base + d, idx, n), base, even, odd);
        store(dst + d * ld + j, even);
        store(dst + (d + 1) * ld + j, odd);
      }
      if (d < D) {  // odd D: the last dim alone (a word would read past the row)
        alignas(64) float col[W] = {};
        for (int64_t l = 0; l < std::min<int64_t>(n, W); ++l) col[l] = to_float(base[l * tok + d]);
        store(dst + d * ld + j, load(col));
      }
    }
  }
}

template <class T>
void store_rows(const float* src, int64_t ld, int64_t rows, int64_t D, float scale, T* dst, int64_t tok) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; d += W) store(dst + r * tok + d, load(src + r * ld + d) * set1(scale), D - d);
}

// Tokens L .. S - 1 of padded sequence b, every head: one block, as outputs are contiguous (tok = H D).
template <class T>
void zero_padding(const Rows<T>& out, int64_t b, int64_t L, int64_t S, int64_t row) {
  std::memset(static_cast<void*>(out.at(b, L, 0)), 0, (S - L) * row * sizeof(T));
}

// Scores -> probabilities in place over the first L entries (lanes past L become 0); returns the log-sum-exp.
inline float softmax_row(float* row, int64_t L) {
  F mx = set1(-INFINITY);
  for (int64_t j = 0; j < L; j += W) mx = max(mx, select(first_lanes(L - j), load(row + j), set1(-INFINITY)));
  const float m = reduce_max(mx);
  F sum = zero();
  for (int64_t j = 0; j < L; j += W) {
    const F e = keep_only(first_lanes(L - j), exp(load(row + j) - set1(m)));
    store(row + j, e);
    sum = sum + e;
  }
  const float total = reduce_add(sum);
  const F inv = set1(1.0f / total);
  for (int64_t j = 0; j < L; j += W) store(row + j, load(row + j) * inv);
  return m + std::log(total);
}

inline void apply_dropout(const float* row, int64_t L, const uint16_t* bits, uint32_t threshold, float scale,
                          float* out) {
  for (int64_t j = 0; j < L; j += W) store(out + j, keep_only(keep(bits + j, threshold), load(row + j) * set1(scale)));
}

struct Sequence {
  int64_t start, len;  // first token (packed: in the batch; padded: 0), number of real tokens
};

template <class T>
Sequence sequence(const AttentionArgs<T>& a, int64_t b) {
  if (a.cu_seqlens) return {a.cu_seqlens[b], a.cu_seqlens[b + 1] - a.cu_seqlens[b]};
  return {0, a.seqlens[b]};
}

// The tasks (sequence, head) of this thread, handed out dynamically (lengths vary); inside a parallel region.
template <class T>
void attention_forward_tasks(const AttentionArgs<T>& a, int64_t max_len) {
  const int64_t D = a.head_dim, Dp = round_up(D, W), Lmax = round_up(max_len, W), H = a.heads;
  Scratch<float> kt(D * Lmax), vr(Lmax * Dp), qs(kBlockQ * Dp), s(kBlockQ * Lmax), o(kBlockQ * Dp);
  Scratch<uint16_t> bits_buf(dropout_bits_size(Lmax));
  const uint32_t threshold = philox::threshold(a.dropout_p);
  const float keep_scale = static_cast<float>(1.0 / (1.0 - a.dropout_p));
#pragma omp for schedule(dynamic)
  for (int64_t task = 0; task < a.batch * H; ++task) {
    const int64_t b = task / H, h = task % H;
    const auto [start, L] = sequence(a, b);
    const int64_t Lp = round_up(L, W);
    if (L > 0) {
      pack_transposed(a.k.at(b, start, h), a.k.tok, L, D, kt.get(), Lp);
      pack_rows(a.v.at(b, start, h), a.v.tok, L, D, 1.0f, vr.get(), Dp);
    }
    for (int64_t q0 = 0; q0 < L; q0 += kBlockQ) {
      const int64_t bq = std::min(kBlockQ, L - q0);
      pack_rows(a.q.at(b, start + q0, h), a.q.tok, bq, D, a.scale, qs.get(), Dp);
      gemm(bq, Lp, D, qs.get(), Dp, 1, kt.get(), Lp, s.get(), Lp, false);  // S = (scale Q) K^T
      for (int64_t i = 0; i < bq; ++i) {
        float* row = s.get() + i * Lp;
        a.lse[b * a.lse_seq + h * a.lse_head + start + q0 + i] = softmax_row(row, L);
        if (a.dropout_p > 0) {
          const uint64_t first = philox::attention_index(philox::key_of(a.keys, b), H, h, q0 + i, 0);
          apply_dropout(row, L, dropout_bits(a.seed, first, L, bits_buf.get()), threshold, keep_scale, row);
        }
      }
      gemm(bq, Dp, L, s.get(), Lp, 1, vr.get(), Dp, o.get(), Dp, false);  // O = P V
      store_rows(o.get(), Dp, bq, D, 1.0f, a.result.at(b, start + q0, h), a.result.tok);
    }
    if (a.seqlens) {  // padding rows: zeros
      if (h == 0) zero_padding(a.result, b, L, a.padded_len, H * D);
      float* lse = a.lse + b * a.lse_seq + h * a.lse_head;
      std::fill(lse + L, lse + a.padded_len, 0.0f);
    }
  }
}

// Per query block: P = exp(S - lse), Pd = dropout(P), dV += Pd^T dO, dPd = dO V^T,
// dS = P (dropout'(dPd) - rowsum(dO * O)), dQ = scale dS K, dK += dS^T (scale Q).
template <class T>
void attention_backward_tasks(const AttentionArgs<T>& a, int64_t max_len) {
  const int64_t D = a.head_dim, Dp = round_up(D, W), Lmax = round_up(max_len, W), H = a.heads;
  const bool dropout = a.dropout_p > 0;
  Scratch<float> kt(D * Lmax), vt(D * Lmax), kr(Lmax * Dp), qs(kBlockQ * Dp), dout(kBlockQ * Dp), o(kBlockQ * Dp);
  Scratch<float> s(kBlockQ * Lmax), pd(dropout ? kBlockQ * Lmax : 0), dp(kBlockQ * Lmax), dk(Lmax * Dp),
      dv(Lmax * Dp), delta(kBlockQ);
  const int64_t bits_stride = dropout_bits_size(Lmax);
  Scratch<uint16_t> bits_buf(dropout ? kBlockQ * bits_stride : 0);
  const uint32_t threshold = philox::threshold(a.dropout_p);
  const float keep_scale = static_cast<float>(1.0 / (1.0 - a.dropout_p));
#pragma omp for schedule(dynamic)
  for (int64_t task = 0; task < a.batch * H; ++task) {
    const int64_t b = task / H, h = task % H;
    const auto [start, L] = sequence(a, b);
    const int64_t Lp = round_up(L, W);
    if (L > 0) {
      pack_transposed(a.k.at(b, start, h), a.k.tok, L, D, kt.get(), Lp);
      pack_transposed(a.v.at(b, start, h), a.v.tok, L, D, vt.get(), Lp);
      pack_rows(a.k.at(b, start, h), a.k.tok, L, D, 1.0f, kr.get(), Dp);
      std::fill_n(dk.get(), L * Dp, 0.0f);
      std::fill_n(dv.get(), L * Dp, 0.0f);
    }
    for (int64_t q0 = 0; q0 < L; q0 += kBlockQ) {
      const int64_t bq = std::min(kBlockQ, L - q0);
      pack_rows(a.q.at(b, start + q0, h), a.q.tok, bq, D, a.scale, qs.get(), Dp);
      pack_rows(a.grad_out.at(b, start + q0, h), a.grad_out.tok, bq, D, 1.0f, dout.get(), Dp);
      for (int64_t i = 0; i < bq; ++i) {  // rowsum(dO * O) = rowsum(dPd * Pd)
        const T* out = a.out.at(b, start + q0 + i, h);
        F acc = zero();
        for (int64_t d = 0; d < D; d += W) acc = fma(load(dout.get() + i * Dp + d), load(out + d, D - d), acc);
        delta.get()[i] = reduce_add(acc);
      }
      gemm(bq, Lp, D, qs.get(), Dp, 1, kt.get(), Lp, s.get(), Lp, false);
      const uint16_t* bits[kBlockQ];
      for (int64_t i = 0; i < bq; ++i) {
        float* row = s.get() + i * Lp;
        const F lse = set1(a.lse[b * a.lse_seq + h * a.lse_head + start + q0 + i]);
        for (int64_t j = 0; j < L; j += W) store(row + j, keep_only(first_lanes(L - j), exp(load(row + j) - lse)));
        if (dropout) {
          const uint64_t first = philox::attention_index(philox::key_of(a.keys, b), H, h, q0 + i, 0);
          bits[i] = dropout_bits(a.seed, first, L, bits_buf.get() + i * bits_stride);
          apply_dropout(row, L, bits[i], threshold, keep_scale, pd.get() + i * Lp);
        }
      }
      gemm(L, Dp, bq, dropout ? pd.get() : s.get(), 1, Lp, dout.get(), Dp, dv.get(), Dp, true);  // dV += Pd^T dO
      gemm(bq, Lp, D, dout.get(), Dp, 1, vt.get(), Lp, dp.get(), Lp, false);                     // dPd = dO V^T
      for (int64_t i = 0; i < bq; ++i) {
        float* dpr = dp.get() + i * Lp;
        const float* p = s.get() + i * Lp;
        const F dlt = set1(delta.get()[i]);
        if (dropout) apply_dropout(dpr, L, bits[i], threshold, keep_scale, dpr);
        for (int64_t j = 0; j < L; j += W) store(dpr + j, load(p + j) * (load(dpr + j) - dlt));  // dS
      }
      gemm(bq, Dp, L, dp.get(), Lp, 1, kr.get(), Dp, o.get(), Dp, false);  // dQ / scale = dS K
      store_rows(o.get(), Dp, bq, D, a.scale, a.result.at(b, start + q0, h), a.result.tok);
      gemm(L, Dp, bq, dp.get(), 1, Lp, qs.get(), Dp, dk.get(), Dp, true);  // dK += dS^T (scale Q)
    }
    if (L > 0) {
      store_rows(dk.get(), Dp, L, D, 1.0f, a.dk.at(b, start, h), a.dk.tok);
      store_rows(dv.get(), Dp, L, D, 1.0f, a.dv.at(b, start, h), a.dv.tok);
    }
    if (a.seqlens && h == 0) {
      for (const Rows<T>* g : {&a.result, &a.dk, &a.dv}) zero_padding(*g, b, L, a.padded_len, H * D);
    }
  }
}
