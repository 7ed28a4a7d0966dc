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

// The tokens generated after `prompt` (a stop token included when one ends
// it). INVALID_ARGUMENT for an empty prompt, max_new_tokens < 0,
// temperature < 0 or top_p outside (0, 1]; INTERNAL when LibTorch fails.
absl::StatusOr<std::vector<int32_t>> Generate(
    const LlamaModel& model, const std::vector<int32_t>& prompt,
    const GenerateOptions& options);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_GENERATE_H_
