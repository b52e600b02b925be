// fastbert_C::cpu_isa: which instruction set the CPU kernels use ("avx512" or "avx2"); tests force "avx2"
// to run the fallback on an AVX-512 machine (as FASTBERT_CPU_ISA=avx2 does for a whole process).
#include <string>

#include "bindings/common.h"

namespace fastbert::bindings {
namespace {

std::string cpu_isa(const std::string& set) {
  if (!set.empty()) {
    TORCH_CHECK(set == "avx512" || set == "avx2", "cpu_isa: unknown instruction set '", set,
                "'; expected 'avx512' or 'avx2'");
    TORCH_CHECK(cpu::set_isa(set == "avx512" ? cpu::Isa::avx512 : cpu::Isa::avx2),
                "cpu_isa: this CPU has no ", set);
  }
  return cpu::isa_name(cpu::isa());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastbert_C, m) {
  m.def("cpu_isa(str set=\"\") -> str", &cpu_isa);
}

}  // namespace fastbert::bindings
