// Batching examples into padded tensors, and the causal-LM loss over their
// target tokens.
#ifndef LATHE_WORKER_ENGINE_BATCH_H_
#define LATHE_WORKER_ENGINE_BATCH_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "worker/engine/chat_data.h"

namespace lathe::engine {

struct Batch {
  torch::Tensor input_ids;       // [B, T] int64, right-padded with pad_id
  torch::Tensor attention_mask;  // [B, T] int64, 0 on padding
  torch::Tensor loss_mask;       // [B, T] bool, true where ids are targets
  int64_t tokens = 0;            // real (non-pad) tokens
};

// Pads examples[indices] to the longest of them. REQUIRES: indices non-empty
// and in range.
Batch MakeBatch(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, int32_t pad_id);

struct LossStats {
  torch::Tensor loss;   // scalar: mean cross-entropy over target tokens
  int64_t targets = 0;  // number of target tokens
  int64_t correct = 0;  // targets whose argmax prediction is right
};

// Next-token loss: logits at position t predict the token at t + 1, counted
// where loss_mask[t + 1]. REQUIRES: logits [B, T, V] for `batch`, at least
// one target.
LossStats CausalLmLoss(const torch::Tensor& logits, const Batch& batch);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_BATCH_H_
