// What every CPU kernel shares: storage types, the instruction set chosen at run time, scratch memory.
//
// Kernels are written once against the vector API of cpu/vec.h and compiled twice, for AVX-512 and for
// AVX2 (the x86-64-v3 baseline every build targets), by cpu/for_each_isa.h. `isa()` picks one at run time.
#pragma once
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#include "philox.h"

namespace fastbert::cpu {

// 16-bit float storage types (bit patterns); all arithmetic is fp32.
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float to_float(f16 v) { return _cvtsh_ss(v.bits); }

enum class Isa { avx2, avx512 };

Isa isa();                   // the instruction set the kernels use: the best this CPU has, unless overridden
bool set_isa(Isa isa);       // override (tests); false (and no change) if this CPU lacks it
const char* isa_name(Isa isa);

// Aligned scratch memory for one kernel call or one thread.
template <class T>
struct Scratch {
  struct Free { void operator()(T* p) const { std::free(p); } };
  std::unique_ptr<T, Free> mem;
  explicit Scratch(size_t n)
      : mem(static_cast<T*>(std::aligned_alloc(64, std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64)))) {
    if (!mem) throw std::bad_alloc();
  }
  T* get() const { return mem.get(); }
};

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// This thread's share [begin, end) of n items, split evenly in order (deterministic for a thread count).
inline void thread_range(int64_t n, int64_t& begin, int64_t& end) {
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
  begin = n * t / nt;
  end = n * (t + 1) / nt;
}

// Below this many elements of work a kernel runs on one thread: waking the others costs more.
constexpr int64_t kParallelMin = 1 << 14;

}  // namespace fastbert::cpu
