// Fused Adam/AdamW on CPU, torch-free: one OpenMP region over chunks of all parameters; per chunk, blocks of
// bf16/fp16 values are widened to fp32 in L1, updated by the vectorized adam_update (csrc/adam.h), narrowed
// back. Compiled for the baseline ISA (x86-64-v3: AVX2/FMA/F16C) and again for x86-64-v4 (AVX-512),
// chosen at run time.
#include "adam.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define FASTBERT_AVX512 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#endif

namespace fastbert::adam {
namespace {

#define INLINE inline __attribute__((always_inline))
#define INLINE_LAMBDA __attribute__((always_inline))

constexpr int64_t kChunk = 1 << 16;  // elements per OpenMP work item; fewer in all: no threads (as torch's grain)
constexpr int kBlock = 512;          // elements widened to fp32 at a time: 5 buffers of 2 KiB stay in L1

INLINE void widen(const bf16* src, float* dst, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i].bits);
}
INLINE void narrow(const float* src, bf16* dst, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) dst[i].bits = float_to_bf16(src[i]);
}

#if defined(__F16C__)
INLINE void widen(const f16* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i].bits);
}
INLINE void narrow(const float* src, f16* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i].bits = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#else
INLINE void widen(const f16* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) {
    _Float16 h;
    memcpy(&h, &src[i].bits, 2);
    dst[i] = float(h);
  }
}
INLINE void narrow(const float* src, f16* dst, int n) {
  for (int i = 0; i < n; ++i) {
    const _Float16 h = _Float16(src[i]);
    memcpy(&dst[i].bits, &h, 2);
  }
}
#endif

// fp32 view of n elements at x: x itself when it is fp32, else widened into buf.
template <class T>
INLINE float* as_f32(T* x, float* buf, int n) {
  if constexpr (std::is_same_v<std::remove_const_t<T>, float>) {
    return const_cast<float*>(x);
  } else {
    widen(x, buf, n);
    return buf;
  }
}
template <class T>
INLINE void store(const float* f, T* x, int n) {
  if constexpr (!std::is_same_v<T, float>) narrow(f, x, n);
}

template <bool AMSGRAD>
INLINE void update_f32(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                       float* __restrict v_max, int64_t n, const Hyper& hyper, float grad_scale, StepCoeffs c) {
  const Hyper h = hyper;
  // The two halves side by side: more streams in flight use more of the memory bandwidth.
  const int64_t q = n / 2;
#pragma omp simd
  for (int64_t i = 0; i < q; ++i) {
    adam_update<AMSGRAD>(p[i], g[i], m[i], v[i], AMSGRAD ? v_max + i : nullptr, h, grad_scale, c);
    adam_update<AMSGRAD>(p[q + i], g[q + i], m[q + i], v[q + i], AMSGRAD ? v_max + q + i : nullptr, h, grad_scale,
                         c);
  }
  for (int64_t i = 2 * q; i < n; ++i)
    adam_update<AMSGRAD>(p[i], g[i], m[i], v[i], AMSGRAD ? v_max + i : nullptr, h, grad_scale, c);
}

// bf16 params and grads with fp32 masters and states: one pass, the gradient widened and the new param narrowed
// in registers (as the fp32 path; 1.2x faster than going through L1 blocks).
template <bool AMSGRAD>
INLINE void update_bf16_master(bf16* __restrict p, const bf16* __restrict g, float* __restrict w,
                               float* __restrict m, float* __restrict v, float* __restrict v_max, int64_t n,
                               const Hyper& hyper, float grad_scale, StepCoeffs c) {
  const Hyper h = hyper;
  auto one = [&](int64_t i) INLINE_LAMBDA {
    adam_update<AMSGRAD>(w[i], bf16_to_float(g[i].bits), m[i], v[i], AMSGRAD ? v_max + i : nullptr, h, grad_scale, c);
    p[i].bits = float_to_bf16(w[i]);
  };
  const int64_t q = n / 2;  // the two halves side by side, as update_f32
#pragma omp simd
  for (int64_t i = 0; i < q; ++i) {
    one(i);
    one(q + i);
  }
  for (int64_t i = 2 * q; i < n; ++i) one(i);
}

// Elements [lo, hi) of one parameter with param/grad dtype P, state dtype S, an fp32 master copy or not.
template <class P, class S, bool MASTER, bool AMSGRAD>
INLINE void update_range(const Param& t, int64_t lo, int64_t hi, const Hyper& h, float grad_scale) {
  P* p = static_cast<P*>(t.param);
  const P* g = static_cast<const P*>(t.grad);
  S* m = static_cast<S*>(t.exp_avg);
  S* v = static_cast<S*>(t.exp_avg_sq);
  S* vm = static_cast<S*>(t.max_exp_avg_sq);
  if constexpr (std::is_same_v<P, float> && std::is_same_v<S, float>) {
    update_f32<AMSGRAD>(p + lo, g + lo, m + lo, v + lo, AMSGRAD ? vm + lo : nullptr, hi - lo, h, grad_scale,
                        t.coeffs);
  } else if constexpr (std::is_same_v<P, bf16> && MASTER) {
    update_bf16_master<AMSGRAD>(p + lo, g + lo, t.master + lo, m + lo, v + lo, AMSGRAD ? vm + lo : nullptr, hi - lo,
                                h, grad_scale, t.coeffs);
  } else {
    alignas(64) float pb[kBlock], gb[kBlock], mb[kBlock], vb[kBlock], vmb[kBlock];
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int n = int(std::min<int64_t>(kBlock, hi - b));
      float* pf = MASTER ? t.master + b : as_f32(p + b, pb, n);
      float* mf = as_f32(m + b, mb, n);
      float* vf = as_f32(v + b, vb, n);
      float* vmf = AMSGRAD ? as_f32(vm + b, vmb, n) : nullptr;
      update_f32<AMSGRAD>(pf, as_f32(g + b, gb, n), mf, vf, vmf, n, h, grad_scale, t.coeffs);
      store(pf, p + b, n);
      store(mf, m + b, n);
      store(vf, v + b, n);
      if constexpr (AMSGRAD) store(vmf, vm + b, n);
    }
  }
}

// States are fp32 for fp32 params and for params with a master copy, else in the param's dtype.
template <bool AMSGRAD>
INLINE void update_chunk(const Param& t, int64_t lo, int64_t hi, const Hyper& h, float grad_scale) {
  const bool master = t.master != nullptr;
  switch (t.param_dtype) {
    case DType::f32: return update_range<float, float, false, AMSGRAD>(t, lo, hi, h, grad_scale);
    case DType::bf16:
      if (master) return update_range<bf16, float, true, AMSGRAD>(t, lo, hi, h, grad_scale);
      return update_range<bf16, bf16, false, AMSGRAD>(t, lo, hi, h, grad_scale);
    case DType::f16:
      if (master) return update_range<f16, float, true, AMSGRAD>(t, lo, hi, h, grad_scale);
      return update_range<f16, f16, false, AMSGRAD>(t, lo, hi, h, grad_scale);
  }
}

INLINE double square(float x) { return double(x) * double(x); }

template <class T>
INLINE double sum_squares(const T* x, int64_t n) {
  double s = 0.0;
  if constexpr (std::is_same_v<T, float>) {
    // The four quarters side by side: a single read stream leaves much of the memory bandwidth unused
    // (measured here: 1.6x faster than one stream).
    const int64_t q = n / 4;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < q; ++i) {
      s0 += square(x[i]);
      s1 += square(x[q + i]);
      s2 += square(x[2 * q + i]);
      s3 += square(x[3 * q + i]);
    }
    s = (s0 + s1) + (s2 + s3);
    for (int64_t i = 4 * q; i < n; ++i) s += square(x[i]);
  } else {
    alignas(64) float buf[kBlock];
    for (int64_t b = 0; b < n; b += kBlock) {
      const int k = int(std::min<int64_t>(kBlock, n - b));
      s += sum_squares(as_f32(x + b, buf, k), k);
    }
  }
  return s;
}

INLINE double sum_squares(const Span& t, int64_t lo, int64_t hi) {
  switch (t.dtype) {
    case DType::f32: return sum_squares(static_cast<const float*>(t.data) + lo, hi - lo);
    case DType::bf16: return sum_squares(static_cast<const bf16*>(t.data) + lo, hi - lo);
    case DType::f16: return sum_squares(static_cast<const f16*>(t.data) + lo, hi - lo);
  }
  return 0.0;
}

// The per-chunk work, compiled once per ISA. (The OpenMP loops below stay outside: GCC outlines a parallel
// region before inlining, so the region would not inherit a target attribute.)
#if defined(FASTBERT_AVX512)
FASTBERT_AVX512 void update_avx512(const Param& t, int64_t lo, int64_t hi, const Hyper& h, float gs, bool amsgrad) {
  amsgrad ? update_chunk<true>(t, lo, hi, h, gs) : update_chunk<false>(t, lo, hi, h, gs);
}
FASTBERT_AVX512 double sum_squares_avx512(const Span& t, int64_t lo, int64_t hi) { return sum_squares(t, lo, hi); }
#endif
void update_base(const Param& t, int64_t lo, int64_t hi, const Hyper& h, float gs, bool amsgrad) {
  amsgrad ? update_chunk<true>(t, lo, hi, h, gs) : update_chunk<false>(t, lo, hi, h, gs);
}
double sum_squares_base(const Span& t, int64_t lo, int64_t hi) { return sum_squares(t, lo, hi); }

struct Chunk { int tensor; int64_t lo, hi; };

// f(chunk index, chunk) for every chunk of `tensors`, on OpenMP threads when there are over kChunk elements in
// all. Dynamic scheduling: a thread that starts late (a busy machine) leaves its chunks to the others.
template <class T, class F>
void for_each_chunk(const T* tensors, int n, F&& f) {
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int i = 0; i < n; ++i) {
    for (int64_t lo = 0; lo < tensors[i].numel; lo += kChunk)
      chunks.push_back({i, lo, std::min(tensors[i].numel, lo + kChunk)});
    total += tensors[i].numel;
  }
  const int64_t nc = int64_t(chunks.size());
#pragma omp parallel for schedule(dynamic) if (total > kChunk)
  for (int64_t i = 0; i < nc; ++i) f(i, chunks[i]);
}

}  // namespace

CpuIsa best_cpu_isa() {
#if defined(FASTBERT_AVX512)
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512) return CpuIsa::avx512;
#endif
  return CpuIsa::base;
}

void adam_step_cpu(const Param* params, int n, const Hyper& h, float grad_scale, bool amsgrad, CpuIsa isa) {
  auto update = update_base;
#if defined(FASTBERT_AVX512)
  if (isa == CpuIsa::avx512) update = update_avx512;
#endif
  grad_scale *= h.grad_sign;
  for_each_chunk(params, n, [&](int64_t, const Chunk& c) {
    update(params[c.tensor], c.lo, c.hi, h, grad_scale, amsgrad);
  });
}

double l2_norm_cpu(const Span* tensors, int n, CpuIsa isa) {
  auto sum_squares = sum_squares_base;
#if defined(FASTBERT_AVX512)
  if (isa == CpuIsa::avx512) sum_squares = sum_squares_avx512;
#endif
  std::vector<double> partial;
  for (int i = 0; i < n; ++i) partial.resize(partial.size() + (tensors[i].numel + kChunk - 1) / kChunk);
  for_each_chunk(tensors, n, [&](int64_t i, const Chunk& c) {
    partial[i] = sum_squares(tensors[c.tensor], c.lo, c.hi);
  });
  double s = 0.0;  // summed in chunk order: the same result for any thread count
  for (double x : partial) s += x;
  return sqrt(s);
}

}  // namespace fastbert::adam
