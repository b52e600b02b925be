#include "cpu/attention.h"

#define FASTBERT_KERNELS "cpu/attention_kernels.h"
#include "cpu/for_each_isa.h"

namespace fastbert::cpu {
namespace {

// The longest sequence, and whether the batch is worth waking other threads for.
template <class T>
std::pair<int64_t, bool> survey(const AttentionArgs<T>& a) {
  int64_t longest = 0, work = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t len = a.cu_seqlens ? a.cu_seqlens[b + 1] - a.cu_seqlens[b] : a.seqlens[b];
    longest = std::max(longest, len);
    work += (len * len + (a.seqlens ? a.padded_len : 0)) * a.heads * a.head_dim;
  }
  return {longest, a.batch * a.heads > 1 && work >= kParallelMin};
}

}  // namespace

template <class T>
void attention_forward(const AttentionArgs<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
  const auto [longest, parallel] = survey(a);
#pragma omp parallel if (parallel)
  (avx512 ? avx512::attention_forward_tasks<T> : avx2::attention_forward_tasks<T>)(a, longest);
}

template <class T>
void attention_backward(const AttentionArgs<T>& a) {
  const bool avx512 = isa() == Isa::avx512;
  const auto [longest, parallel] = survey(a);
#pragma omp parallel if (parallel)
  (avx512 ? avx512::attention_backward_tasks<T> : avx2::attention_backward_tasks<T>)(a, longest);
}

template void attention_forward(const AttentionArgs<float>&);
template void attention_forward(const AttentionArgs<bf16>&);
template void attention_forward(const AttentionArgs<f16>&);
template void attention_backward(const AttentionArgs<float>&);
template void attention_backward(const AttentionArgs<bf16>&);
template void attention_backward(const AttentionArgs<f16>&);

}  // namespace fastbert::cpu
