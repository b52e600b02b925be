// C++ tests of the torch-free Adam core (csrc/adam.h, csrc/cpu/adam.cpp): the per-element math against an
// independent double-precision Adam, the vectorized CPU core (both ISAs) against a plain scalar loop of
// that math, bf16/fp16 storage, master weights, chunk/block boundaries, the norm, and the CUDA launch plan.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "adam.h"

using namespace fastbert::adam;

#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                  \
      std::fprintf(stderr, "\n");                                         \
      std::exit(1);                                                       \
    }                                                                     \
  } while (0)

static std::mt19937 rng(0);
static std::vector<float> randn(int64_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = d(rng);
  return x;
}

struct Config { double lr, beta1, beta2, eps, wd; bool decoupled, maximize, amsgrad; float clip; };

static const Config kConfigs[] = {
    {1e-3, 0.9, 0.999, 1e-8, 0.0, false, false, false, 1.0f},
    {1e-2, 0.9, 0.99, 1e-6, 0.1, false, true, true, 0.5f},   // L2 decay, maximize, amsgrad, clipped
    {3e-3, 0.3, 0.9, 1e-8, 0.05, true, false, false, 1.0f},  // AdamW; 1 - beta1 >= 0.5: torch's other lerp branch
    {1e-2, 0.8, 0.95, 1e-8, 0.2, true, true, true, 0.25f},
};

// Adam in double, written from the algorithm in torch.optim.Adam's documentation.
struct RefState { std::vector<double> p, m, v, vmax; };
static void ref_step(RefState& s, const std::vector<float>& grad, const Config& c, int step) {
  for (size_t i = 0; i < s.p.size(); ++i) {
    double g = double(grad[i]) * c.clip * (c.maximize ? -1.0 : 1.0);
    if (c.decoupled) s.p[i] *= 1.0 - c.lr * c.wd;
    else g += c.wd * s.p[i];
    s.m[i] = c.beta1 * s.m[i] + (1.0 - c.beta1) * g;
    s.v[i] = c.beta2 * s.v[i] + (1.0 - c.beta2) * g * g;
    s.vmax[i] = std::max(s.vmax[i], s.v[i]);
    const double vhat = (c.amsgrad ? s.vmax[i] : s.v[i]) / (1.0 - std::pow(c.beta2, step));
    s.p[i] -= c.lr * s.m[i] / (1.0 - std::pow(c.beta1, step)) / (std::sqrt(vhat) + c.eps);
  }
}

static double max_rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  double err = 0.0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return err / scale;
}

// fp32 params over sizes that cross the 512-element block and 65536-element chunk boundaries, 0 and 1.
static void test_fp32_against_double_and_scalar(CpuIsa isa) {
  const std::vector<int64_t> sizes = {1, 0, 511, 513, 2 * 65536 + 17, 1000};
  for (const Config& c : kConfigs) {
    const Hyper h = make_hyper(c.lr, c.beta1, c.beta2, c.eps, c.wd, c.decoupled, c.maximize);
    std::vector<std::vector<float>> p, m, v, vm, sp, sm, sv, svm;  // s*: the scalar loop's copies
    std::vector<RefState> ref;
    for (int64_t n : sizes) {
      p.push_back(randn(n)), m.emplace_back(n), v.emplace_back(n), vm.emplace_back(n);
      sp.push_back(p.back()), sm.emplace_back(n), sv.emplace_back(n), svm.emplace_back(n);
      ref.push_back({std::vector<double>(p.back().begin(), p.back().end()), std::vector<double>(n),
                     std::vector<double>(n), std::vector<double>(n)});
    }
    for (int step = 1; step <= 10; ++step) {
      std::vector<std::vector<float>> g;
      std::vector<Param> ps;
      const StepCoeffs coeffs = make_step_coeffs(c.lr, c.beta1, c.beta2, step);
      for (size_t k = 0; k < sizes.size(); ++k) {
        g.push_back(randn(sizes[k], 0.1f));
        ps.push_back({p[k].data(), g[k].data(), m[k].data(), v[k].data(), c.amsgrad ? vm[k].data() : nullptr,
                      nullptr, sizes[k], DType::f32, coeffs});
        ref_step(ref[k], g[k], c, step);
        for (int64_t i = 0; i < sizes[k]; ++i)
          c.amsgrad ? adam_update<true>(sp[k][i], g[k][i], sm[k][i], sv[k][i], &svm[k][i], h,
                                        c.clip * h.grad_sign, coeffs)
                    : adam_update<false>(sp[k][i], g[k][i], sm[k][i], sv[k][i], &svm[k][i], h,
                                         c.clip * h.grad_sign, coeffs);
      }
      adam_step_cpu(ps.data(), int(ps.size()), h, c.clip, c.amsgrad, isa);
    }
    for (size_t k = 0; k < sizes.size(); ++k) {
      for (int64_t i = 0; i < sizes[k]; ++i)
        CHECK(p[k][i] == sp[k][i] && m[k][i] == sm[k][i] && v[k][i] == sv[k][i] && vm[k][i] == svm[k][i],
              "isa %d size %lld element %lld differs from the scalar loop", int(isa), (long long)sizes[k],
              (long long)i);
      const double err = max_rel_err(p[k], ref[k].p);
      CHECK(err < 1e-5, "isa %d size %lld: param error %g against double Adam", int(isa), (long long)sizes[k], err);
      CHECK(max_rel_err(m[k], ref[k].m) < 1e-5 && max_rel_err(v[k], ref[k].v) < 1e-5, "moments differ");
    }
  }
}

static float round_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }
static float round_f16(float x) { return float(_Float16(x)); }

static void test_bf16_rounding() {
  CHECK(float_to_bf16(1.0f) == 0x3f80, "1.0");
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "halfway rounds to even (down)");
  CHECK(float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82, "halfway rounds to even (up)");
  CHECK(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81, "above halfway rounds up");
  CHECK(float_to_bf16(-INFINITY) == 0xff80 && float_to_bf16(3.4e38f) == 0x7f80, "inf, overflow to inf");
  CHECK(std::isnan(bf16_to_float(float_to_bf16(NAN))), "NaN stays NaN");
}

// bf16/fp16 params: with an fp32 master copy (fp32 states) and without (states in the param's dtype).
template <class T>
static void test_low_precision(DType dtype, float (*round)(float), CpuIsa isa) {
  const int64_t n = 65536 + 1001;
  const Config c = kConfigs[3];
  const Hyper h = make_hyper(c.lr, c.beta1, c.beta2, c.eps, c.wd, c.decoupled, c.maximize);
  auto to_storage = [&](const std::vector<float>& x) {
    std::vector<T> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      if constexpr (std::is_same_v<T, bf16>) out[i].bits = float_to_bf16(x[i]);
      else { const _Float16 f = _Float16(x[i]); std::memcpy(&out[i].bits, &f, 2); }
    }
    return out;
  };
  auto to_float = [&](T x) {
    if constexpr (std::is_same_v<T, bf16>) return bf16_to_float(x.bits);
    else { _Float16 f; std::memcpy(&f, &x.bits, 2); return float(f); }
  };
  std::vector<float> p0 = randn(n);
  for (float& x : p0) x = round(x);
  // With a master copy: the master follows fp32 Adam exactly, the param is its rounding.
  std::vector<T> p = to_storage(p0);
  std::vector<float> master = p0, m(n), v(n), vm(n), fp = p0, fm(n), fv(n), fvm(n);
  // Without: every value is rounded to T after each step, the math in between is fp32.
  std::vector<T> q = to_storage(p0), qm(n), qv(n), qvm(n);
  std::vector<float> rq = p0, rqm(n), rqv(n), rqvm(n);
  for (int step = 1; step <= 4; ++step) {
    std::vector<float> g = randn(n, 0.1f);
    for (float& x : g) x = round(x);
    std::vector<T> gs = to_storage(g);
    const StepCoeffs coeffs = make_step_coeffs(c.lr, c.beta1, c.beta2, step);
    Param with{p.data(), gs.data(), m.data(), v.data(), vm.data(), master.data(), n, dtype, coeffs};
    Param without{q.data(), gs.data(), qm.data(), qv.data(), qvm.data(), nullptr, n, dtype, coeffs};
    adam_step_cpu(&with, 1, h, c.clip, true, isa);
    adam_step_cpu(&without, 1, h, c.clip, true, isa);
    for (int64_t i = 0; i < n; ++i) {
      adam_update<true>(fp[i], g[i], fm[i], fv[i], &fvm[i], h, c.clip * h.grad_sign, coeffs);
      adam_update<true>(rq[i], g[i], rqm[i], rqv[i], &rqvm[i], h, c.clip * h.grad_sign, coeffs);
      rq[i] = round(rq[i]), rqm[i] = round(rqm[i]), rqv[i] = round(rqv[i]), rqvm[i] = round(rqvm[i]);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    CHECK(master[i] == fp[i] && m[i] == fm[i] && v[i] == fv[i] && vm[i] == fvm[i], "master path, element %lld",
          (long long)i);
    CHECK(to_float(p[i]) == round(fp[i]), "param is not the rounded master at %lld", (long long)i);
    CHECK(to_float(q[i]) == rq[i] && to_float(qm[i]) == rqm[i] && to_float(qv[i]) == rqv[i] &&
              to_float(qvm[i]) == rqvm[i],
          "low-precision states, element %lld", (long long)i);
  }
}

static void test_norm(CpuIsa isa) {
  const std::vector<float> a = randn(3 * 65536 + 5), b = randn(1), c = randn(777, 3.0f);
  std::vector<bf16> cb(c.size());
  std::vector<f16> cf(c.size());
  double want = 0.0;
  for (float x : a) want += double(x) * x;
  for (float x : b) want += double(x) * x;
  for (size_t i = 0; i < c.size(); ++i) {
    cb[i].bits = float_to_bf16(c[i]);
    const _Float16 h = _Float16(c[i]);
    std::memcpy(&cf[i].bits, &h, 2);
    want += double(round_bf16(c[i])) * round_bf16(c[i]) + double(float(h)) * float(h);
  }
  const Span spans[] = {{a.data(), int64_t(a.size()), DType::f32}, {nullptr, 0, DType::f32},
                        {b.data(), 1, DType::f32}, {cb.data(), int64_t(c.size()), DType::bf16},
                        {cf.data(), int64_t(c.size()), DType::f16}};
  const double got = l2_norm_cpu(spans, 5, isa);
  CHECK(std::abs(got - std::sqrt(want)) <= 1e-12 * std::sqrt(want), "norm %.17g, want %.17g", got, std::sqrt(want));
}

// Every chunk of every tensor is planned exactly once, within the launch limits.
static void test_plan_launches() {
  std::vector<int64_t> numels;
  for (int i = 0; i < 100; ++i) numels.push_back(i % 7 == 0 ? 0 : (i * 7919) % 300000);
  numels.push_back(40 * 65536);  // spans launches
  std::vector<std::vector<int>> seen(numels.size());
  for (size_t i = 0; i < numels.size(); ++i) seen[i].assign((numels[i] + 65535) / 65536, 0);
  int launches = 0;
  plan_launches<5, 16>(numels.data(), int(numels.size()), 65536,
                       [&](const int* ids, int nt, const uint8_t* slot, const int32_t* chunk, int nb) {
                         CHECK(nt >= 1 && nt <= 5 && nb >= 1 && nb <= 16, "limits: %d tensors %d blocks", nt, nb);
                         for (int b = 0; b < nb; ++b) {
                           CHECK(slot[b] < nt, "slot out of range");
                           seen[ids[slot[b]]][chunk[b]] += 1;
                         }
                         ++launches;
                       });
  for (size_t i = 0; i < numels.size(); ++i)
    for (int count : seen[i]) CHECK(count == 1, "tensor %zu: a chunk planned %d times", i, count);
  CHECK(launches > 10, "expected many launches, got %d", launches);
}

int main() {
  test_bf16_rounding();
  test_plan_launches();
  for (CpuIsa isa : {CpuIsa::base, best_cpu_isa()}) {
    test_fp32_against_double_and_scalar(isa);
    test_low_precision<bf16>(DType::bf16, round_bf16, isa);
    test_low_precision<f16>(DType::f16, round_f16, isa);
    test_norm(isa);
  }
  std::printf("test_adam: all passed (ISAs: base%s)\n", best_cpu_isa() == CpuIsa::avx512 ? ", avx512" : "");
  return 0;
}
