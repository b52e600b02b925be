// (No include guard: included once per kernel source.) Compiles the kernels named by FASTBERT_KERNELS
// twice, inside namespace fastbert::cpu:
//   avx512::  AVX-512 (F, BW, VL, DQ), 16 fp32 lanes
//   avx2::    AVX2 + FMA (x86-64-v3, the baseline of the whole build), 8 fp32 lanes
// each against its own cpu/vec.h. The #pragma gives every function defined in between (template
// instantiations included) the AVX-512 target; the rest of the build stays on the baseline.
//
//   #define FASTBERT_KERNELS "cpu/layer_norm_kernels.h"
//   #include "cpu/for_each_isa.h"
//   ... isa() == Isa::avx512 ? avx512::kernel(...) : avx2::kernel(...)
#ifndef FASTBERT_KERNELS
#error "define FASTBERT_KERNELS (the header with the kernels) before including cpu/for_each_isa.h"
#endif

// GCC 12 warns about the deliberately undefined registers inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
namespace fastbert::cpu::avx512 {
namespace {
#define FASTBERT_AVX512 1
#include "cpu/vec.h"
#include FASTBERT_KERNELS
#undef FASTBERT_AVX512
}  // namespace
}  // namespace fastbert::cpu::avx512
#pragma GCC pop_options

namespace fastbert::cpu::avx2 {
namespace {
#define FASTBERT_AVX512 0
#include "cpu/vec.h"
#include FASTBERT_KERNELS
#undef FASTBERT_AVX512
}  // namespace
}  // namespace fastbert::cpu::avx2
#pragma GCC diagnostic pop

#undef FASTBERT_KERNELS
