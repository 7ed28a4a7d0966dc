// The causal-LM loss without the whole logits tensor: the output head and
// cross-entropy are computed a chunk of target positions at a time, and
// only at positions that carry a loss (a chat example's prompt tokens get
// no logits at all). The loss path holds at most chunk_tokens x V logits,
// plus their gradient while training, instead of B x T x V.
#ifndef LATHE_WORKER_ENGINE_LOSS_CHUNKED_CROSS_ENTROPY_H_
#define LATHE_WORKER_ENGINE_LOSS_CHUNKED_CROSS_ENTROPY_H_

#include <torch/torch.h>

#include <cstdint>

#include "worker/engine/data/batch.h"

namespace lathe::engine {

// Mean cross-entropy of softmax(hidden head^T) against labels, and the
// number of rows whose argmax is the label. hidden: [N, C], head: [V, C],
// labels: [N] int64, N > 0. Differentiable in hidden and head: when
// gradients are enabled and either requires them, each chunk's gradient is
// computed as the chunk is (the softmax minus the one-hot label, times the
// head or the hidden rows), so no chunk's logits outlive it; the gradients
// of the head are computed only when it requires them (not for LoRA).
// stats.peak_logits_bytes: the largest logits block held (float32; the
// gradient is computed in its place, and counted again only when the
// hidden states are of another dtype). REQUIRES: chunk_tokens > 0.
LossStats ChunkedCrossEntropy(const torch::Tensor& hidden,
                              const torch::Tensor& head,
                              const torch::Tensor& labels,
                              int64_t chunk_tokens);

// The next-token loss of CausalLmLoss (batch.h) from the final hidden
// states [B, T, C] and the head [V, C]: hidden[b, t] predicts
// input_ids[b, t + 1] where loss_mask[b, t + 1]. REQUIRES: at least one
// target; chunk_tokens > 0.
LossStats ChunkedCausalLmLoss(const torch::Tensor& hidden,
                              const torch::Tensor& head, const Batch& batch,
                              int64_t chunk_tokens);

// Per-row log-probabilities log softmax(hidden head^T)[label], computed a
// chunk of rows at a time; differentiable in hidden and head (where they
// require gradients) for any upstream gradient: backward recomputes each
// chunk's logits instead of keeping them, so memory stays chunk_tokens x V.
// For losses over sequence log-probabilities (DPO, ORPO).
// *peak_logits_bytes (when not null) is raised to the largest logits block
// held. REQUIRES: hidden [N, C], head [V, C], labels [N] int64,
// chunk_tokens > 0.
struct TokenLogps {
  torch::Tensor logps;    // [N] float32
  torch::Tensor correct;  // [N] bool: the argmax is the label
};
TokenLogps ChunkedTokenLogps(const torch::Tensor& hidden,
                             const torch::Tensor& head,
                             const torch::Tensor& labels, int64_t chunk_tokens,
                             int64_t* peak_logits_bytes = nullptr);

// The target tokens of `batch` and which example of the batch each belongs
// to: the rows of hidden [B, T, C] that predict them (hidden[b, t] predicts
// input_ids[b, t + 1] where loss_mask[b, t + 1]), their labels, and for
// each the index of its example (row b of a padded batch; segment k of a
// packed one, counted over rows in order).
struct CausalTargets {
  torch::Tensor rows;     // [N] int64: the predicting positions, b * (T-1) + t
  torch::Tensor hidden;   // [N, C]
  torch::Tensor labels;   // [N] int64
  torch::Tensor example;  // [N] int64
};
CausalTargets SelectCausalTargets(const torch::Tensor& hidden,
                                  const Batch& batch);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_LOSS_CHUNKED_CROSS_ENTROPY_H_
