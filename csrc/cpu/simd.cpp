#include "cpu/simd.h"

#include <atomic>
#include <cstring>

namespace fastbert::cpu {
namespace {

bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// FASTBERT_CPU_ISA=avx2 forces the AVX2 kernels on an AVX-512 machine.
Isa detect() {
  const char* env = std::getenv("FASTBERT_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "avx2") == 0) return Isa::avx2;
  return has_avx512() ? Isa::avx512 : Isa::avx2;
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{detect()};
  return isa;
}

}  // namespace

Isa isa() { return current().load(std::memory_order_relaxed); }

bool set_isa(Isa isa) {
  if (isa == Isa::avx512 && !has_avx512()) return false;
  current().store(isa);
  return true;
}

const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : "avx2"; }

}  // namespace fastbert::cpu
