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
  // dh: d(loss)/d(sum) per token; sums: dh summed per table row (at its first token); first: that token
  Scratch<float> dh(a.rows * n), sums(a.rows * n), norm_sums(2 * np * threads);
  Scratch<int64_t> first(a.vocab + a.types + a.positions);
  std::fill_n(norm_sums.get(), 2 * np * threads, 0.0f);
  struct Table {
    const int64_t* ids;
    int64_t size, skip;
    T* grad;
  };
  const Table tables[3] = {{a.input_ids, a.vocab, a.padding_idx, a.grad_word},
                           {a.token_type_ids, a.types, -1, a.grad_token_type},
                           {a.position_ids, a.positions, -1, a.grad_position}};
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t r0, r1;
    thread_range(a.rows, r0, r1);
    float* gw = norm_sums.get() + 2 * np * t;
    (avx512 ? avx512::embedding_layer_norm_backward_rows<T> : avx2::embedding_layer_norm_backward_rows<T>)(
        a, r0, r1, dh.get(), gw, gw + np);
    int64_t f0, f1;
    thread_range(a.vocab + a.types + a.positions, f0, f1);
    std::fill(first.get() + f0, first.get() + f1, int64_t{-1});
    int64_t* table_first = first.get();
    for (const Table& table : tables) {
#pragma omp barrier
      (avx512 ? avx512::sum_rows_by_id : avx2::sum_rows_by_id)(table.ids, a.rows, dh.get(), n, table_first, sums.get(),
                                                                t, nt);
#pragma omp barrier
      int64_t id0, id1;
      thread_range(table.size, id0, id1);
      (avx512 ? avx512::write_table_grad<T> : avx2::write_table_grad<T>)(table_first, sums.get(), n, id0, id1,
                                                                         table.skip, table.grad);
      table_first += table.size;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    float w = 0.0f, b = 0.0f;
    for (int t = 0; t < threads; ++t) {
      w += norm_sums.get()[2 * np * t + j];
      b += norm_sums.get()[2 * np * t + np + j];
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
