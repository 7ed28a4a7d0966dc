// Merging fine-tunes of one base model (METHODS.md §5, docs/merging.md):
// the merge "recipe". RunMerge reads a MergeSpec top to bottom: open the
// base and the inputs, (greedy_soup: select the inputs), merge tensor by
// tensor, write the model folder and the optional LoRA adapter.
//
// Memory: the inputs are memory-mapped and read one tensor at a time, so a
// merge holds N + 1 float64 copies of one tensor at a time, plus the merged
// model in the base's dtype (written at the end) and the LoRA factors.
// Everything computes on the CPU; greedy_soup scores on its device.
#ifndef LATHE_WORKER_ENGINE_MERGE_MERGE_H_
#define LATHE_WORKER_ENGINE_MERGE_MERGE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/merge/greedy_soup.h"
#include "worker/engine/merge/merge_input.h"
#include "worker/engine/merge/merge_spec.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

// Tensor `done` (1-based) of `total`, called `name`, has been merged.
using TensorProgress =
    std::function<void(int64_t done, int64_t total, const std::string& name)>;

// The projections that get re-factorised LoRA factors (every decoder
// layer); rank 0 = none.
struct LoraTargets {
  int rank = 0;                      // 16
  std::vector<std::string> modules;  // {"q_proj", "v_proj"}
};

struct MergedWeights {
  TensorMap model;  // every base tensor: theta_0 + merged tau, base dtype
  // The LoRA factors of `LoraTargets` (alpha = r, so scale 1), by
  // adapter_model.safetensors key; empty without targets.
  TensorMap lora;
  // With targets: the tensors whose merged tau is not zero but that the
  // adapter cannot carry (norms, embeddings, other projections).
  std::vector<std::string> lora_dropped;
};

// Merges `inputs` (with `weights`, one each) per MergeTaskVectors, over
// every tensor of the base in name order, calling `on_tensor` (may be
// empty) after each. INVALID_ARGUMENT for a target module the base lacks;
// errors from reading the tensors.
// REQUIRES: inputs opened on `base`, non-empty; Validate-d params.
absl::StatusOr<MergedWeights> MergeWeights(
    const MergeBase& base, const std::vector<const MergeInput*>& inputs,
    const std::vector<double>& weights, const MergeParams& params,
    const LoraTargets& lora, const TensorProgress& on_tensor);

// Progress callbacks of a merge; each may be empty.
struct MergeHooks {
  TensorProgress on_tensor;  // the final merge's tensors
  std::function<void(const SoupStep&)> on_soup_step;  // greedy_soup
};

struct MergeResult {
  int64_t tensors = 0;  // merged
  // The inputs merged (greedy_soup: those kept, in the order they joined),
  // by index in spec.inputs.
  std::vector<int> merged_inputs;
  std::optional<double> validation_loss;         // greedy_soup: the soup's
  std::vector<std::string> lora_target_modules;  // of the written adapter
  std::vector<std::string> lora_dropped;         // as MergedWeights
};

// Runs `spec`: Validate, open the base and every input (errors name the
// input), merge, write spec.output_dir (and spec.lora.dir). Errors carry an
// ErrorKind; LibTorch failures are INTERNAL. Never throws.
absl::StatusOr<MergeResult> RunMerge(const MergeSpec& spec,
                                     const MergeHooks& hooks);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MERGE_MERGE_H_
