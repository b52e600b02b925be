#include "cpu/bias_gelu.h"

#define FASTBERT_KERNELS "cpu/bias_gelu_kernels.h"
#include "cpu/for_each_isa.h"

namespace fastbert::cpu {

template <class T>
void bias_gelu_forward(const BiasGeluArgs<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
  auto rows = avx512 ? (a.tanh ? avx512::bias_gelu_forward_rows<T, true> : avx512::bias_gelu_forward_rows<T, false>)
                     : (a.tanh ? avx2::bias_gelu_forward_rows<T, true> : avx2::bias_gelu_forward_rows<T, false>);
#pragma omp parallel if (a.rows * a.n >= kParallelMin)
  {
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    rows(a, r0, r1);
  }
}

template <class T>
void bias_gelu_backward(const BiasGeluArgs<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
  auto rows = avx512 ? (a.tanh ? avx512::bias_gelu_backward_rows<T, true> : avx512::bias_gelu_backward_rows<T, false>)
                     : (a.tanh ? avx2::bias_gelu_backward_rows<T, true> : avx2::bias_gelu_backward_rows<T, false>);
  const int64_t np = round_up(a.n, 16);  // a multiple of every W
  const int threads = a.rows * a.n >= kParallelMin ? omp_get_max_threads() : 1;
  Scratch<float> sums(a.grad_bias ? np * threads : 0);  // per thread: column sums of grad_x
  if (a.grad_bias) std::fill_n(sums.get(), np * threads, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    rows(a, r0, r1, a.grad_bias ? sums.get() + np * omp_get_thread_num() : nullptr);
  }
  if (a.grad_bias) {
    for (int64_t j = 0; j < a.n; ++j) {
      float s = 0.0f;
      for (int t = 0; t < threads; ++t) s += sums.get()[np * t + j];
      a.grad_bias[j] = s;
    }
  }
}

template void bias_gelu_forward(const BiasGeluArgs<float>&);
template void bias_gelu_forward(const BiasGeluArgs<bf16>&);
template void bias_gelu_forward(const BiasGeluArgs<f16>&);
template void bias_gelu_backward(const BiasGeluArgs<float>&);
template void bias_gelu_backward(const BiasGeluArgs<bf16>&);
template void bias_gelu_backward(const BiasGeluArgs<f16>&);

}  // namespace fastbert::cpu
