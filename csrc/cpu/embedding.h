// BERT's embeddings: dropout(LayerNorm(word[id] + token_type[type] + position[pos])), the torch-free CPU
// kernels behind torch.ops.fastbert_C.embedding_layer_norm_* (contract: fastbert/ops/embedding.py).
// T is the storage type of the tables and the output (float, bf16, f16); math is fp32. Index values must
// lie inside their tables (the bindings check).
#pragma once
#include "cpu/simd.h"

namespace fastbert::cpu {

template <class T>
struct EmbeddingLayerNormArgs {
  const int64_t *input_ids, *token_type_ids, *position_ids;  // [rows]
  const T *word, *token_type, *position;                     // [*, n] tables
  const float *weight, *bias;                                // [n]
  T* out;                     // forward: [rows, n]
  const T* grad_out;          // backward: [rows, n]
  float *mean, *rstd;         // [rows]: the forward writes them, the backward reads them
  T *grad_word, *grad_token_type, *grad_position;  // backward: the tables' gradients, every row written
  float *grad_weight, *grad_bias;                  // backward: [n]
  int64_t vocab, types, positions;                 // rows of the word, token type and position tables
  int64_t rows, n;
  float eps;
  double dropout_p;
  uint64_t seed;
  int64_t padding_idx;        // the word row that gets no gradient, or -1
  const int64_t* keys = nullptr;  // [rows] the tokens' dropout keys (element key * n + col), or null: row indices
};

template <class T>
void embedding_layer_norm_forward(const EmbeddingLayerNormArgs<T>& a);
template <class T>
void embedding_layer_norm_backward(const EmbeddingLayerNormArgs<T>& a);

}  // namespace fastbert::cpu
