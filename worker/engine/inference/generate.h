// Text generation with a model: greedy, or sampling with temperature and
// nucleus (top-p), seeded. Each step runs the whole sequence through the
// model (no key/value cache): meant for checking a model or an adapter by
// hand, not for serving.
#ifndef LATHE_WORKER_ENGINE_INFERENCE_GENERATE_H_
#define LATHE_WORKER_ENGINE_INFERENCE_GENERATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model/llama.h"

namespace lathe::engine {

struct GenerateOptions {
  int max_new_tokens = 128;
  double temperature = 0;  // 0: greedy (argmax)
  double top_p = 1;        // sample from the smallest set holding this mass
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one
};

// Logit arithmetic at decode time (METHODS.md §11): EFT up-scaling and
// proxy tuning (DExperts). At every step each model sees the same prefix
// and the next token comes from
//   logits_model + alpha * (logits_expert - logits_anti_expert),
// the experts' logits cut to the model's vocabulary (proxy tuning's
// code); temperature and top-p apply after the fusion. With logits or
// log-probabilities the softmax is the same (each model's log-partition is
// a constant of the step). The models must share a tokenizer: the caller
// checks (engine_cli's generate refuses otherwise).
struct LogitFusion {
  const LlamaModel* expert = nullptr;       // the small fine-tuned model
  const LlamaModel* anti_expert = nullptr;  // the small base
  double alpha = 1;                         // EFT's beta
};

// The next-token logits [V] float32 on the CPU after `ids`: the model's, or
// fused by `fusion` when not null. REQUIRES: ids non-empty.
torch::Tensor NextLogits(const LlamaModel& model,
                         const std::vector<int64_t>& ids,
                         const LogitFusion* fusion = nullptr);

// The tokens generated after `prompt` (a stop token included when one ends
// it), from the model alone or fused by `fusion`. INVALID_ARGUMENT for an
// empty prompt, max_new_tokens < 0, temperature < 0, top_p outside (0, 1],
// or an expert whose vocabulary is smaller than the model's; INTERNAL when
// LibTorch fails.
absl::StatusOr<std::vector<int32_t>> Generate(
    const LlamaModel& model, const std::vector<int32_t>& prompt,
    const GenerateOptions& options, const LogitFusion* fusion = nullptr);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_GENERATE_H_
