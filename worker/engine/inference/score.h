// Scoring token sequences with a model: per-token log-probabilities of the
// actual next tokens and the mean loss over a mask, as Hugging Face's
// causal-LM loss computes it (labels shifted by one).
#ifndef LATHE_WORKER_ENGINE_INFERENCE_SCORE_H_
#define LATHE_WORKER_ENGINE_INFERENCE_SCORE_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/model/llama.h"

namespace lathe::engine {

struct Scores {
  // logprobs[t - 1] = log p(ids[t] | ids[0..t-1]) for t = 1 .. T-1.
  std::vector<double> logprobs;
  // Mean of -logprobs over the targets t with loss_mask[t] == 1 (NaN when
  // there is none), and over every target.
  double loss = 0;
  double loss_all = 0;
  torch::Tensor logits;  // [1, T, V] float32
};

// Runs `model` (no gradients) on one example. INVALID_ARGUMENT for an
// example of fewer than 2 tokens or an id outside the model's vocabulary;
// INTERNAL when LibTorch fails.
absl::StatusOr<Scores> ScoreExample(const LlamaModel& model,
                                    const Example& example);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_SCORE_H_
