// The torch-free CPU kernels on every instruction set this machine has: Philox against its known-answer
// vector, the vectorized dropout masks against the scalar csrc/philox.h, GELU against std::erfc.
// (Outputs and gradients against the PyTorch reference ops: tests/ops/test_cpu_kernels.py.)
#include <cmath>
#include <cstdio>
#include <vector>

#include "cpu/attention.h"
#include "cpu/bias_gelu.h"
#include "cpu/layer_norm.h"

using namespace fastbert;

static int failures = 0;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      ++failures;                                           \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);      \
      std::printf(__VA_ARGS__);                             \
      std::printf("\n");                                    \
    }                                                       \
  } while (0)

static void philox_known_answer() {
  uint32_t w[4];
  philox::philox4x32_10(0, 0, w);  // Random123's kat_vectors: philox4x32_10, zero counter and key
  CHECK(w[0] == 0x6627e8d5u && w[1] == 0xe169c58du && w[2] == 0xbc57ac4cu && w[3] == 0x9b00dbd8u,
        "philox4x32_10(0, 0) = %08x %08x %08x %08x", w[0], w[1], w[2], w[3]);
  CHECK(philox::threshold(0.1) == 6554 && philox::threshold(0.5) == 32768 && philox::threshold(0.0) == 0,
        "threshold");
}

// Row-wise dropout: with x = 1 the pre-norm h is the keep mask times 1 / (1 - p), element r * n + c.
static void layer_norm_dropout_mask() {
  const int64_t rows = 5, n = 37;  // odd n: rows start mid-way through a Philox call
  const double p = 0.3;
  const uint64_t seed = 0x123456789abcdefull;
  std::vector<float> x(rows * n, 1.0f), w(n, 1.0f), b(n, 0.0f), out(rows * n), h(rows * n), mean(rows), rstd(rows);
  cpu::layer_norm_forward(cpu::LayerNormForward<float, float>{x.data(), nullptr, nullptr, w.data(), b.data(),
                                                              out.data(), h.data(), mean.data(), rstd.data(), rows, n,
                                                              1e-5f, p, seed});
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  for (int64_t i = 0; i < rows * n; ++i) {
    const bool keep = philox::bits16(seed, i) >= philox::threshold(p);
    CHECK(h[i] == (keep ? scale : 0.0f), "layer_norm mask at %ld: h = %g, keep = %d", long(i), h[i], keep);
  }
}

// Attention dropout: q = k = 0 gives uniform probabilities 1 / L; with v[j] = e_j (D = L) the output row q
// is keep(q, k) / ((1 - p) L), element ((seq * H + head) << 32) | (q << 16) | k. Padded and packed.
static void attention_dropout_mask() {
  const int64_t H = 2, L = 19, D = L;
  const double p = 0.25;
  const uint64_t seed = 99;
  for (bool packed : {false, true}) {
    const int64_t S = packed ? L : L + 4, B = 2, tokens = B * S;
    std::vector<float> q(tokens * H * D, 0.0f), v(tokens * H * D, 0.0f), out(tokens * H * D, -1.0f),
        lse(B * H * S);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t hh = 0; hh < H; ++hh) v[(t * H + hh) * D + t % S % D] = 1.0f;
    const int32_t seqlens[2] = {int32_t(L), int32_t(L)}, cu[3] = {0, int32_t(L), int32_t(2 * L)};
    const cpu::Rows<const float> in{q.data(), packed ? 0 : S * H * D, H * D, D};
    const cpu::Rows<const float> vr{v.data(), packed ? 0 : S * H * D, H * D, D};
    cpu::AttentionArgs<float> a{in, in, vr, {}, {}, {out.data(), in.seq, H * D, D}, {}, {}, lse.data(),
                                packed ? 0 : H * S, packed ? tokens : S, packed ? nullptr : seqlens,
                                packed ? cu : nullptr, B, S, H, D, 1.0f, p, seed};
    cpu::attention_forward(a);
    const float scale = static_cast<float>(1.0 / ((1.0 - p) * L));
    for (int64_t s = 0; s < B; ++s)
      for (int64_t hh = 0; hh < H; ++hh)
        for (int64_t i = 0; i < L; ++i)
          for (int64_t j = 0; j < L; ++j) {
            const bool keep = philox::bits16(seed, philox::attention_index(s, H, hh, i, j)) >= philox::threshold(p);
            const float got = out[((s * S + i) * H + hh) * D + j];
            CHECK(std::fabs(got - (keep ? scale : 0.0f)) < 1e-6f,
                  "attention mask (packed %d) seq %ld head %ld (%ld, %ld): %g", packed, long(s), long(hh), long(i),
                  long(j), got);
          }
    if (!packed) CHECK(out[((0 * S + L) * H + 0) * D] == 0.0f, "padded rows are zero");
  }
}

// GELU(x) = x erfc(-x / sqrt 2) / 2 and its derivative, relative to double precision.
static void gelu_accuracy() {
  const int64_t n = 20001;
  std::vector<float> x(n), y(n), g(n, 1.0f), dx(n);
  for (int64_t i = 0; i < n; ++i) x[i] = -10.0f + 20.0f * i / (n - 1);
  cpu::bias_gelu_forward(cpu::BiasGeluArgs<float>{x.data(), nullptr, nullptr, y.data(), nullptr, 1, n, false});
  cpu::bias_gelu_backward(cpu::BiasGeluArgs<float>{x.data(), nullptr, g.data(), dx.data(), nullptr, 1, n, false});
  double worst_y = 0, worst_dy = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i], ref = 0.5 * v * std::erfc(-v / std::sqrt(2.0));
    const double dref = 0.5 * std::erfc(-v / std::sqrt(2.0)) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
    if (std::fabs(v) <= 3) worst_y = std::max(worst_y, std::fabs(y[i] - ref) / std::fabs(ref + 1e-300));
    worst_dy = std::max(worst_dy, std::fabs(dx[i] - dref));
  }
  CHECK(worst_y < 2e-6, "GELU relative error %.3g on |x| <= 3", worst_y);
  CHECK(worst_dy < 1e-6, "GELU' absolute error %.3g", worst_dy);
}

int main() {
  philox_known_answer();
  for (cpu::Isa isa : {cpu::Isa::avx512, cpu::Isa::avx2}) {
    if (!cpu::set_isa(isa)) {
      std::printf("skip %s: not supported here\n", cpu::isa_name(isa));
      continue;
    }
    std::printf("%s\n", cpu::isa_name(isa));
    layer_norm_dropout_mask();
    attention_dropout_mask();
    gelu_accuracy();
  }
  std::printf(failures ? "%d failures\n" : "ok\n", failures);
  return failures ? 1 : 0;
}
