// Multi-head attention over padded or packed variable-length sequences: the torch-free CPU kernels behind
// torch.ops.fastbert_C.attention[_varlen]_forward / _backward (contract: fastbert/ops/attention.py).
//
// One task per (sequence, head), over the sequence's real tokens only: padding costs nothing but the
// zeros written to its rows. Inside a task the queries go in blocks of kBlockQ against all keys, so the
// scores of a block ([kBlockQ, len] fp32, <= 128 KB) stay in L2 and softmax needs no running rescale;
// no [B, H, S, S] matrix exists. The backward recomputes the probabilities from the saved log-sum-exp
// and regenerates the dropout mask from Philox. T is the storage type (float, bf16, f16); math is fp32.
#pragma once
#include "cpu/simd.h"

namespace fastbert::cpu {

// Element (sequence b, token t, head h, dim d) of a [.., H, D] tensor: data[b*seq + t*tok + h*head + d],
// with t counted from the start of the batch (packed) or of the sequence (padded, where seq > 0).
template <class P>
struct Rows {
  P* data;
  int64_t seq, tok, head;
  P* at(int64_t b, int64_t t, int64_t h) const { return data + b * seq + t * tok + h * head; }
};

template <class T>
struct AttentionArgs {
  Rows<const T> q, k, v;
  Rows<const T> out;          // backward: the forward's output
  Rows<const T> grad_out;     // backward
  Rows<T> result;             // forward: the output; backward: dq   (these are contiguous [.., H, D])
  Rows<T> dk, dv;             // backward
  float* lse;                 // log-sum-exp of each query row's scaled scores (0 on padded rows):
  int64_t lse_seq, lse_head;  //   lse[b*lse_seq + h*lse_head + t]; the forward writes it, the backward reads it
  const int32_t* seqlens;     // padded: [batch] lengths (rows past a length are padding, zeroed), or null
  const int32_t* cu_seqlens;  // packed: [batch + 1] starts, or null
  int64_t batch, padded_len;  // padded_len: S of a padded batch (unused when packed)
  int64_t heads, head_dim;
  float scale;
  double dropout_p;
  uint64_t seed;
  const int64_t* keys = nullptr;  // [batch] the sequences' dropout keys, or null: their indices b
};

constexpr int64_t kBlockQ = 64;

template <class T>
void attention_forward(const AttentionArgs<T>& a);
template <class T>
void attention_backward(const AttentionArgs<T>& a);

}  // namespace fastbert::cpu
