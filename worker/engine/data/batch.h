// Batching examples into padded tensors, and the causal-LM loss over their
// target tokens.
#ifndef LATHE_WORKER_ENGINE_DATA_BATCH_H_
#define LATHE_WORKER_ENGINE_DATA_BATCH_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "worker/engine/data/chat_data.h"
#include "worker/engine/model/llama.h"

namespace lathe::engine {

// A model input: one example per row right-padded (MakeBatch), or several
// examples end to end in a row (PackBatch in data/packing.h).
struct Batch {
  torch::Tensor input_ids;  // [B, T] int64, right-padded with pad_id
  // [B, T] bool, true where ids are targets. A target is predicted by the
  // token before it, which always belongs to the same example: the first
  // token of an example is never a target.
  torch::Tensor loss_mask;
  // [B, T] int64: what each target position must predict. Undefined = the
  // input_ids themselves; set when the inputs are altered (Masked Thought,
  // data/masked_thought.h) while the targets stay the original tokens.
  torch::Tensor labels;
  SequenceLayout layout;  // positions and attention segments
  int64_t tokens = 0;     // real (non-pad) tokens
  int64_t padding = 0;    // pad tokens: B * T - tokens
};

// Pads examples[indices] to the longest of them. REQUIRES: indices non-empty
// and in range.
Batch MakeBatch(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, int32_t pad_id);

// `batch` with its tensors on `device`.
Batch ToDevice(Batch batch, torch::Device device);

// The ids the targets of `batch` predict: labels when set, else input_ids.
const torch::Tensor& Labels(const Batch& batch);

// The number of target tokens of `batch`.
int64_t Targets(const Batch& batch);

struct LossStats {
  torch::Tensor loss;   // scalar: mean cross-entropy over target tokens
  int64_t targets = 0;  // number of target tokens
  int64_t correct = 0;  // targets whose argmax prediction is right
  // ChunkedCausalLmLoss only: bytes of the largest logits block held.
  int64_t peak_logits_bytes = 0;
};

// Next-token loss over full logits: logits at position t predict the token
// at t + 1, counted where loss_mask[t + 1]. The reference for
// ChunkedCausalLmLoss (loss/chunked_cross_entropy.h), which the trainer
// uses. REQUIRES: logits [B, T, V] for `batch`, at least one target.
LossStats CausalLmLoss(const torch::Tensor& logits, const Batch& batch);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_BATCH_H_
