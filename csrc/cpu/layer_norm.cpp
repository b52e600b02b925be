#include "cpu/layer_norm.h"

#define FASTBERT_KERNELS "cpu/layer_norm_kernels.h"
#include "cpu/for_each_isa.h"

namespace fastbert::cpu {

template <class T, class R>
void layer_norm_forward(const LayerNormForward<T, R>& a) {
  const bool avx512 = isa() == Isa::avx512;
#pragma omp parallel if (a.rows * a.n >= kParallelMin)
  {
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    (avx512 ? avx512::layer_norm_forward_rows<T, R> : avx2::layer_norm_forward_rows<T, R>)(a, r0, r1);
  }
}

template <class T>
void layer_norm_backward(const LayerNormBackward<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
  const int64_t np = round_up(a.n, 16);  // a multiple of every W
  const int threads = a.rows * a.n >= kParallelMin ? omp_get_max_threads() : 1;
  Scratch<float> sums(3 * np * threads);  // per thread: column sums of grad_weight, grad_bias, grad_input_bias
  std::fill_n(sums.get(), 3 * np * threads, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    float* gw = sums.get() + 3 * np * omp_get_thread_num();
    (avx512 ? avx512::layer_norm_backward_rows<T> : avx2::layer_norm_backward_rows<T>)(a, r0, r1, gw, gw + np,
                                                                                    gw + 2 * np);
  }
  float* out[3] = {a.grad_weight, a.grad_bias, a.grad_input_bias};
  for (int k = 0; k < 3; ++k) {
    if (!out[k]) continue;
    for (int64_t j = 0; j < a.n; ++j) {
      float s = 0.0f;
      for (int t = 0; t < threads; ++t) s += sums.get()[3 * np * t + k * np + j];
      out[k][j] = s;
    }
  }
}

#define FASTBERT_INSTANTIATE(T, R) template void layer_norm_forward(const LayerNormForward<T, R>&);
FASTBERT_INSTANTIATE(float, float)
FASTBERT_INSTANTIATE(bf16, bf16)
FASTBERT_INSTANTIATE(bf16, float)
FASTBERT_INSTANTIATE(f16, f16)
FASTBERT_INSTANTIATE(f16, float)
#undef FASTBERT_INSTANTIATE
template void layer_norm_backward(const LayerNormBackward<float>&);
template void layer_norm_backward(const LayerNormBackward<bf16>&);
template void layer_norm_backward(const LayerNormBackward<f16>&);

}  // namespace fastbert::cpu
