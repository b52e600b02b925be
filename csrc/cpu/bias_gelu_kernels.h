// (Compiled once per instruction set by cpu/for_each_isa.h.) GELU and its derivative, W lanes at a time.
//   exact: GELU(h) = h Phi(h),                 GELU'(h) = Phi(h) + h phi(h)
//   tanh:  GELU(h) = h s, s = sigmoid(2 u),    GELU'(h) = s + 2 h s (1 - s) u',  u = c (h + k h^3)
// (h s is 0.5 h (1 + tanh u) without its cancellation for negative h.)
// fp32 storage computes the exact form through erfc (accurate in the negative tail); bf16 / fp16 storage,
// whose rounding (2^-9 / 2^-12 relative) is far coarser, through erf_fast: h (1 + erf(h / sqrt 2)) / 2,
// abs error < 5e-7, no exp in the forward (as PyTorch's own GELU, which also cancels in the far tail).
constexpr float kSqrt2OverPi = 0.7978845608028654f, kKappa = 0.044715f, kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kInvSqrt2 = 0.70710678118654752f;

// erf(x): Eigen's rational minimax fit x P(x^2) / Q(x^2) on [-4, 4] (erf is +-1 in fp32 beyond).
inline F erf_fast(F x) {
  x = min(max(x, set1(-4.0f)), set1(4.0f));
  const F x2 = x * x;
  F p = fma(x2, set1(-2.72614225801306e-10f), set1(2.77068142495902e-08f));
  p = fma(x2, p, set1(-2.10102402082508e-06f));
  p = fma(x2, p, set1(-5.69250639462346e-05f));
  p = fma(x2, p, set1(-7.34990630326855e-04f));
  p = fma(x2, p, set1(-2.95459980854025e-03f));
  p = fma(x2, p, set1(-1.60960333262415e-02f));
  F q = fma(x2, set1(-1.45660718464996e-05f), set1(-2.13374055278905e-04f));
  q = fma(x2, q, set1(-1.68282697438203e-03f));
  q = fma(x2, q, set1(-7.37332916720468e-03f));
  q = fma(x2, q, set1(-1.42647390514189e-02f));
  return x * p * reciprocal(q);
}

template <bool Tanh, bool Fast = false>
inline F gelu(F h) {
  if constexpr (Fast && !Tanh) {
    const F half_h = set1(0.5f) * h;
    return fma(half_h, erf_fast(h * set1(kInvSqrt2)), half_h);
  } else if constexpr (Tanh) {
    const F u = set1(kSqrt2OverPi) * fma(set1(kKappa) * h, h * h, h);
    return h * reciprocal(set1(1.0f) + exp(set1(-2.0f) * u));
  } else {
    return h * normal_cdf(h);
  }
}

template <bool Tanh, bool Fast = false>
inline F gelu_grad(F h) {
  if constexpr (Fast && !Tanh) {
    const F cdf = fma(set1(0.5f), erf_fast(h * set1(kInvSqrt2)), set1(0.5f));
    return fma(h * set1(kInvSqrt2Pi), exp(set1(-0.5f) * h * h), cdf);
  } else if constexpr (Tanh) {
    const F h2 = h * h, u = set1(kSqrt2OverPi) * fma(set1(kKappa) * h, h2, h);
    const F s = reciprocal(set1(1.0f) + exp(set1(-2.0f) * u));
    const F du = set1(kSqrt2OverPi) * fma(set1(3.0f * kKappa), h2, set1(1.0f));
    return fma(set1(2.0f) * h * s * (set1(1.0f) - s), du, s);
  } else {
    const F a = abs(h) * set1(0.70710678118654752f), t = reciprocal(fma(a, set1(0.5f), set1(1.0f)));
    const F e = exp(-(a * a));  // exp(-h^2 / 2): the normal density's and erfc's common factor
    const F half_erfc = set1(0.5f) * t * e * exp(erfc_poly(t));
    const F cdf = select(less(h, zero()), half_erfc, set1(1.0f) - half_erfc);
    return fma(h * set1(kInvSqrt2Pi), e, cdf);
  }
}

template <class T, bool Tanh>
void bias_gelu_forward_rows(const BiasGeluArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t n = a.n;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = 0; j < n; j += W) {
      F h = load(a.x + r * n + j, n - j);
      if (a.bias) h = h + load(a.bias + j, n - j);
      store(a.out + r * n + j, gelu<Tanh, !std::is_same_v<T, float>>(h), n - j);
    }
  }
}

// grad_x = grad_out GELU'(x + bias); its column sums are added to grad_bias (round_up(n, W) floats) if given.
template <class T, bool Tanh>
void bias_gelu_backward_rows(const BiasGeluArgs<T>& a, int64_t r0, int64_t r1, float* grad_bias) {
  const int64_t n = a.n;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = 0; j < n; j += W) {
      F h = load(a.x + r * n + j, n - j);
      if (a.bias) h = h + load(a.bias + j, n - j);
      const F g = load(a.grad_out + r * n + j, n - j) * gelu_grad<Tanh, !std::is_same_v<T, float>>(h);  // 0 past n
      store(a.out + r * n + j, g, n - j);
      if (grad_bias) store(grad_bias + j, load(grad_bias + j) + g);
    }
  }
}
