#include "cpu/embedding.h"

#define FASTBERT_KERNELS "cpu/embedding_kernels.h"
#include "cpu/for_each_isa.h"

namespace fastbert::cpu {

template <class T>
void embedding_layer_norm_forward(const EmbeddingLayerNormArgs<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
#pragma omp parallel if (a.rows * a.n >= kParallelMin)
  {
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    (avx512 ? avx512::embedding_layer_norm_forward_rows<T> : avx2::embedding_layer_norm_forward_rows<T>)(a, r0, r1);
  }
}

template <class T>
void embedding_layer_norm_backward(const EmbeddingLayerNormArgs<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
  const int64_t n = a.n, np = round_up(n, 16);  // a multiple of every W
  const int threads = a.rows * n >= kParallelMin ? omp_get_max_threads() : 1;
  Scratch<float> dh(a.rows * n), sums(2 * np * threads);  // per thread: column sums of grad_weight, grad_bias
  std::fill_n(sums.get(), 2 * np * threads, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    float* gw = sums.get() + 2 * np * t;
    (avx512 ? avx512::embedding_layer_norm_backward_rows<T> : avx2::embedding_layer_norm_backward_rows<T>)(
        a, r0, r1, dh.get(), gw, gw + np);
#pragma omp barrier
    auto scatter = avx512 ? avx512::scatter_add_rows : avx2::scatter_add_rows;
    scatter(a.input_ids, a.rows, dh.get(), n, a.grad_word, a.padding_idx, t, nt);
    scatter(a.token_type_ids, a.rows, dh.get(), n, a.grad_token_type, -1, t, nt);
    scatter(a.position_ids, a.rows, dh.get(), n, a.grad_position, -1, t, nt);
  }
  for (int64_t j = 0; j < n; ++j) {
    float w = 0.0f, b = 0.0f;
    for (int t = 0; t < threads; ++t) {
      w += sums.get()[2 * np * t + j];
      b += sums.get()[2 * np * t + np + j];
    }
    a.grad_weight[j] = w;
    a.grad_bias[j] = b;
  }
}

template void embedding_layer_norm_forward(const EmbeddingLayerNormArgs<float>&);
template void embedding_layer_norm_forward(const EmbeddingLayerNormArgs<bf16>&);
template void embedding_layer_norm_forward(const EmbeddingLayerNormArgs<f16>&);
template void embedding_layer_norm_backward(const EmbeddingLayerNormArgs<float>&);
template void embedding_layer_norm_backward(const EmbeddingLayerNormArgs<bf16>&);
template void embedding_layer_norm_backward(const EmbeddingLayerNormArgs<f16>&);

}  // namespace fastbert::cpu
