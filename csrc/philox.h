// The dropout RNG of every backend, bit for bit: Philox4x32-10 (fastbert/ops/philox.py explains the scheme).
//
// Element i of a dropout site with 64-bit `seed` takes 16 bits of philox(key=seed, counter=i >> 3):
// word (i & 7) >> 1, half i & 1, so one Philox call feeds 8 consecutive elements. The element is kept
// iff its bits >= threshold(p) and then scaled by 1 / (1 - p).
// Scalar and torch-free, for host and device code; csrc/cpu/vec.h vectorizes the same rounds.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTBERT_HD __host__ __device__ __forceinline__
#else
#define FASTBERT_HD inline
#endif

namespace fastbert::philox {

constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;      // key schedule (Weyl) increments
constexpr int kRounds = 10;

// The four 32-bit words of philox4x32_10(key=(seed lo, seed hi), counter=(lo32(c), hi32(c), 0, 0)).
FASTBERT_HD void philox4x32_10(uint64_t seed, uint64_t counter, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t pa = static_cast<uint64_t>(kRoundA) * c0, pb = static_cast<uint64_t>(kRoundB) * c2;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// The 16 random bits of element i.
FASTBERT_HD uint32_t bits16(uint64_t seed, uint64_t i) {
  uint32_t w[4];
  philox4x32_10(seed, i >> 3, w);
  return (w[(i & 7) >> 1] >> (16 * (i & 1))) & 0xFFFFu;
}

// Elements with bits16 < threshold(p) are dropped: round(p * 65536) (half to even, as Python's round).
FASTBERT_HD uint32_t threshold(double p) {
  const double t = rint(p * 65536.0);
  return t >= 65536.0 ? 65536u : static_cast<uint32_t>(t);
}

// The dropout key of row (or sequence) i: keys[i], or i itself without keys (the ops' dropout_keys).
FASTBERT_HD uint64_t key_of(const int64_t* keys, int64_t i) { return static_cast<uint64_t>(keys ? keys[i] : i); }

// Index of attention-probability element (q, k) of head `head` of the sequence whose key is `seq`.
FASTBERT_HD uint64_t attention_index(uint64_t seq, uint64_t heads, uint64_t head, uint64_t q, uint64_t k) {
  return ((seq * heads + head) << 32) | (q << 16) | k;
}

}  // namespace fastbert::philox
