// Scoring token sequences with a model: per-token log-probabilities of the
// actual next tokens and the mean loss over a mask, as Hugging Face's
// causal-LM loss computes it (labels shifted by one); in batches, with the
// mean-pooled hidden states (data analysis, inference/analyze.h).
#ifndef LATHE_WORKER_ENGINE_INFERENCE_SCORE_H_
#define LATHE_WORKER_ENGINE_INFERENCE_SCORE_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
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

// What ScoreExamples measured of one example.
struct ExampleScore {
  // The mean of -log p(ids[t] | ids[..t]) over the targets t with
  // loss_mask[t] == 1, as ScoreExample's loss; NaN without one.
  double loss = 0;
  int64_t targets = 0;
  // With `embed`: the mean of the final hidden states (after the last norm)
  // over the example's tokens, [C], not normalised; else empty.
  std::vector<float> embedding;
};

// Runs `model` (no gradients) on `examples` in right-padded batches of up
// to `batch_size` rows, the examples taken longest first so that rows of a
// batch have similar lengths; the results in the examples' order, equal to
// one example per forward up to float rounding. `progress(done)` after each
// batch with the number of examples scored so far. INVALID_ARGUMENT for
// batch_size < 1, an empty example or an id outside the vocabulary;
// INTERNAL when LibTorch fails.
absl::StatusOr<std::vector<ExampleScore>> ScoreExamples(
    const LlamaModel& model, const std::vector<Example>& examples,
    int batch_size, int32_t pad_id, bool embed,
    const std::function<void(int64_t)>& progress = nullptr);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_SCORE_H_
