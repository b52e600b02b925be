// (No include guard: cpu/for_each_isa.h includes it once per instruction set.) The vector API the CPU
// kernels are written against: F holds W floats; loads and stores convert from and to fp32 / bf16 / fp16
// storage (round to nearest even); +, -, *, / are GCC's vector operators. Then the pieces built on it:
// exp, erfc, the normal CDF, and the Philox dropout bits.
#if FASTBERT_AVX512

constexpr int W = 16;
using F = __m512;
using I = __m512i;
using Mask = __mmask16;  // one bit per lane: comparisons and dropout keep masks

inline F set1(float v) { return _mm512_set1_ps(v); }
inline F zero() { return _mm512_setzero_ps(); }
inline F load(const float* p) { return _mm512_loadu_ps(p); }
inline F load(const bf16* p) {
  const I u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
inline F load(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline void store(float* p, F v) { _mm512_storeu_ps(p, v); }
inline void store(bf16* p, F v) {  // round to nearest even; NaN stays a (quiet) NaN
  const I u = _mm512_castps_si512(v), lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  I r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
inline void store(f16* p, F v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
inline F max(F a, F b) { return _mm512_max_ps(a, b); }
inline F min(F a, F b) { return _mm512_min_ps(a, b); }
inline F abs(F a) { return _mm512_abs_ps(a); }
inline F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline F times_pow2(F x, F n) { return _mm512_scalef_ps(x, n); }  // x 2^n for integral n in [-126, 127]
inline F reciprocal(F x) {  // 1 / x to ~1 ulp: the 14-bit estimate and one Newton step
  const F r = _mm512_rcp14_ps(x);
  return r * _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f));
}
inline float reduce_add(F v) { return _mm512_reduce_add_ps(v); }
inline float reduce_max(F v) { return _mm512_reduce_max_ps(v); }
inline Mask less(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline F select(Mask m, F if_true, F if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
inline F keep_only(Mask m, F v) { return _mm512_maskz_mov_ps(m, v); }  // v where m, else 0
inline Mask first_lanes(int64_t n) { return n >= W ? Mask(0xFFFF) : Mask((1u << n) - 1); }
// Dropout keep mask of W elements from their 16 random bits: kept iff bits >= threshold.
inline Mask keep(const uint16_t* bits, uint32_t threshold) {
  const I b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits)));
  return _mm512_cmpge_epu32_mask(b, _mm512_set1_epi32(static_cast<int>(threshold)));
}

// Gathers (transposing small blocks): lane l reads base[idx[l]] for lanes l < n, 0 beyond.
inline I lane_offsets(int64_t stride) {
  return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                            _mm512_set1_epi32(static_cast<int>(stride)));
}
inline F gather(const float* base, I idx, int64_t n) {
  return _mm512_mask_i32gather_ps(zero(), first_lanes(n), idx, base, 4);
}
// The 32-bit words holding 16-bit elements idx[l] and idx[l] + 1, split into fp32 (even, odd).
inline I gather_words(const void* base, I idx, int64_t n) {
  return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), first_lanes(n), idx, base, 2);
}
inline void split_words(I w, const bf16*, F& even, F& odd) {
  even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline void split_words(I w, const f16*, F& even, F& odd) {
  even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w));
  odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16)));
}

inline I set1_u32(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline I add_u32(I a, I b) { return _mm512_add_epi32(a, b); }
inline I lane_index() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
// (hi, lo) 32-bit halves of a * b, lane by lane.
inline void mulhilo(I a, I b, I& hi, I& lo) {
  const I even = _mm512_mul_epu32(a, b), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), b);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}
// Store the words w0..w3 of W counters in counter order: c0.w0 c0.w1 c0.w2 c0.w3 c1.w0 ...
inline void store_interleaved(uint32_t* out, I w0, I w1, I w2, I w3) {
  const I t0 = _mm512_unpacklo_epi32(w0, w1), t1 = _mm512_unpackhi_epi32(w0, w1);
  const I t2 = _mm512_unpacklo_epi32(w2, w3), t3 = _mm512_unpackhi_epi32(w2, w3);
  // u_m: 128-bit lane k holds the four words of counter 4k + m
  const I u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const I u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const I v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const I v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(v0, v1, 0x88));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
}

#else  // AVX2 + FMA

constexpr int W = 8;
using F = __m256;
using I = __m256i;
using Mask = __m256;  // all-ones lanes where true

inline F set1(float v) { return _mm256_set1_ps(v); }
inline F zero() { return _mm256_setzero_ps(); }
inline F load(const float* p) { return _mm256_loadu_ps(p); }
inline F load(const bf16* p) {
  const I u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
inline F load(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void store(float* p, F v) { _mm256_storeu_ps(p, v); }
inline __m128i narrow_u16(I w) {  // 8 x u32 < 2^16 -> 8 x u16
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0x08));
}
inline void store(bf16* p, F v) {  // round to nearest even; NaN stays a (quiet) NaN
  const I u = _mm256_castps_si256(v), lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  I r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_u16(r));
}
inline void store(f16* p, F v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
inline F max(F a, F b) { return _mm256_max_ps(a, b); }
inline F min(F a, F b) { return _mm256_min_ps(a, b); }
inline F abs(F a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
inline F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline F times_pow2(F x, F n) {
  const I biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return x * _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
}
inline F reciprocal(F x) { return _mm256_set1_ps(1.0f) / x; }  // (the 12-bit estimate + Newton: ~2 ulp off)
inline float reduce_add(F v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float reduce_max(F v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline Mask less(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
inline F select(Mask m, F if_true, F if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
inline F keep_only(Mask m, F v) { return _mm256_and_ps(m, v); }
inline Mask first_lanes(int64_t n) {
  const I lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, W))), lane));
}
inline Mask keep(const uint16_t* bits, uint32_t threshold) {  // values < 2^16: a signed compare is exact
  const I b = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits)));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, _mm256_set1_epi32(static_cast<int>(threshold) - 1)));
}

inline I lane_offsets(int64_t stride) {
  return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(stride)));
}
inline F gather(const float* base, I idx, int64_t n) {
  return _mm256_mask_i32gather_ps(zero(), base, idx, first_lanes(n), 4);
}
inline I gather_words(const void* base, I idx, int64_t n) {
  return _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), static_cast<const int*>(base), idx,
                                     _mm256_castps_si256(first_lanes(n)), 2);
}
inline void split_words(I w, const bf16*, F& even, F& odd) {
  even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline void split_words(I w, const f16*, F& even, F& odd) {
  even = _mm256_cvtph_ps(narrow_u16(_mm256_and_si256(w, _mm256_set1_epi32(0xFFFF))));
  odd = _mm256_cvtph_ps(narrow_u16(_mm256_srli_epi32(w, 16)));
}

inline I set1_u32(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline I add_u32(I a, I b) { return _mm256_add_epi32(a, b); }
inline I lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
inline void mulhilo(I a, I b, I& hi, I& lo) {
  const I even = _mm256_mul_epu32(a, b), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}
inline void store_interleaved(uint32_t* out, I w0, I w1, I w2, I w3) {
  const I t0 = _mm256_unpacklo_epi32(w0, w1), t1 = _mm256_unpackhi_epi32(w0, w1);
  const I t2 = _mm256_unpacklo_epi32(w2, w3), t3 = _mm256_unpackhi_epi32(w2, w3);
  const I u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);  // lane k: counter 4k + m
  const I u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(u0, u1, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(u2, u3, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm256_permute2x128_si256(u0, u1, 0x31));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 24), _mm256_permute2x128_si256(u2, u3, 0x31));
}

#endif

// ---- ISA-independent from here on ----

// The first n < W lanes (tails): zeros beyond n on load, nothing written beyond n on store.
template <class T>
inline F load(const T* p, int64_t n) {
  if (n >= W) return load(p);
  alignas(64) T tmp[W] = {};
  std::memcpy(tmp, p, n * sizeof(T));
  return load(tmp);
}
template <class T>
inline void store(T* p, F v, int64_t n) {
  if (n >= W) return store(p, v);
  alignas(64) T tmp[W];
  store(tmp, v);
  std::memcpy(p, tmp, n * sizeof(T));
}

// e^x to ~1 ulp (Cephes expf); arguments are clamped to [-87, 88], whose ends stay finite and normal.
inline F exp(F x) {
  x = min(max(x, set1(-87.0f)), set1(88.0f));
  const F n = round(x * set1(1.44269504088896341f));
  F r = fma(n, set1(-0.693359375f), x);
  r = fma(n, set1(2.12194440e-4f), r);
  F p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  p = fma(p, r * r, r + set1(1.0f));
  return times_pow2(p, n);
}

// erfc(a) for a >= 0, relative error < 1.2e-7 before fp32 rounding (Numerical Recipes' erfcc, a Chebyshev
// fit): t exp(-a^2 + P(t)) with t = 1 / (1 + a / 2). With exp_a2 = exp(-a^2) given, skips one exp.
inline F erfc_poly(F t) {
  F p = set1(0.17087277f);
  p = fma(p, t, set1(-0.82215223f));
  p = fma(p, t, set1(1.48851587f));
  p = fma(p, t, set1(-1.13520398f));
  p = fma(p, t, set1(0.27886807f));
  p = fma(p, t, set1(-0.18628806f));
  p = fma(p, t, set1(0.09678418f));
  p = fma(p, t, set1(0.37409196f));
  p = fma(p, t, set1(1.00002368f));
  return fma(p, t, set1(-1.26551223f));
}
inline F erfc_nonneg(F a) {
  const F t = reciprocal(fma(a, set1(0.5f), set1(1.0f)));
  return t * exp(fma(-a, a, erfc_poly(t)));
}

// Phi(x) = P(N(0,1) <= x) = erfc(-x / sqrt 2) / 2, without cancellation on either side.
inline F normal_cdf(F x) {
  const F half_erfc = set1(0.5f) * erfc_nonneg(abs(x) * set1(0.70710678118654752f));
  return select(less(x, zero()), half_erfc, set1(1.0f) - half_erfc);
}

// Philox dropout bits: out[8 j + e] = bits16(seed, 8 (first + j) + e) for counters first .. first + count - 1
// (rounded up to a multiple of W counters: `out` holds round_up(count, W) * 8 values).
inline void philox_bits16(uint64_t seed, uint64_t first, int64_t count, uint16_t* out) {
  using namespace philox;
  I k0[kRounds], k1[kRounds];  // the key schedule
  for (int r = 0; r < kRounds; ++r) {
    k0[r] = set1_u32(static_cast<uint32_t>(seed) + r * kKeyA);
    k1[r] = set1_u32(static_cast<uint32_t>(seed >> 32) + r * kKeyB);
  }
  const I ma = set1_u32(kRoundA), mb = set1_u32(kRoundB);
  for (int64_t j = 0; j < count; j += W) {
    const uint64_t c = first + j;
    I c0 = add_u32(set1_u32(static_cast<uint32_t>(c)), lane_index()), c1 = set1_u32(static_cast<uint32_t>(c >> 32));
    if (static_cast<uint32_t>(c) > 0xFFFFFFFFu - (W - 1)) {  // the low words wrap inside this vector: rare
      alignas(64) uint32_t lo[W], hi[W];
      for (int l = 0; l < W; ++l) lo[l] = static_cast<uint32_t>(c + l), hi[l] = static_cast<uint32_t>((c + l) >> 32);
      std::memcpy(&c0, lo, sizeof c0);
      std::memcpy(&c1, hi, sizeof c1);
    }
    I c2 = set1_u32(0), c3 = set1_u32(0);
#pragma GCC unroll 10
    for (int r = 0; r < kRounds; ++r) {
      I hi_a, lo_a, hi_b, lo_b;
      mulhilo(c0, ma, hi_a, lo_a);
      mulhilo(c2, mb, hi_b, lo_b);
      c0 = hi_b ^ c1 ^ k0[r];
      c2 = hi_a ^ c3 ^ k1[r];
      c1 = lo_b;
      c3 = lo_a;
    }
    store_interleaved(reinterpret_cast<uint32_t*>(out + 8 * j), c0, c1, c2, c3);
  }
}

// Dropout bits of elements start .. start + n - 1 into `buf` (dropout_bits_size(n) values); returns the
// pointer to element `start`'s bits, valid for n + W reads.
constexpr int64_t dropout_bits_size(int64_t n) { return n + 16 * W + 16; }
inline const uint16_t* dropout_bits(uint64_t seed, uint64_t start, int64_t n, uint16_t* buf) {
  const uint64_t first = start >> 3;
  philox_bits16(seed, first, ((start + n + W) >> 3) - first + 1, buf);
  return buf + (start & 7);
}
