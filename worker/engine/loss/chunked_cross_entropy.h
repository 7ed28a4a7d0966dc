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

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_LOSS_CHUNKED_CROSS_ENTROPY_H_
