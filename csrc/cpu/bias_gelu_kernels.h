// (Compiled once per instruction set by cpu/for_each_isa.h.) GELU and its derivative, W lanes at a time.
//   exact: GELU(h) = h Phi(h),                 GELU'(h) = Phi(h) + h phi(h)
//   tanh:  GELU(h) = h s, s = sigmoid(2 u),    GELU'(h) = s + 2 h s (1 - s) u',  u = c (h + k h^3)
// (h s is 0.5 h (1 + tanh u) without its cancellation for negative h.)
constexpr float kSqrt2OverPi = 0.7978845608028654f, kKappa = 0.044715f, kInvSqrt2Pi = 0.3989422804014327f;

template <bool Tanh>
inline F gelu(F h) {
  if constexpr (Tanh) {
    const F u = set1(kSqrt2OverPi) * fma(set1(kKappa) * h, h * h, h);
    return h * reciprocal(set1(1.0f) + exp(set1(-2.0f) * u));
  } else {
    return h * normal_cdf(h);
  }
}

template <bool Tanh>
inline F gelu_grad(F h) {
  if constexpr (Tanh) {
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
      store(a.out + r * n + j, gelu<Tanh>(h), n - j);
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
      const F g = load(a.grad_out + r * n + j, n - j) * gelu_grad<Tanh>(h);  // 0 past n
      store(a.out + r * n + j, g, n - j);
      if (grad_bias) store(grad_bias + j, load(grad_bias + j) + g);
    }
  }
}
