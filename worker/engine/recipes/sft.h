// The supervised fine-tuning recipe: next-token cross-entropy on the
// completion tokens (objective "sft"), with a LoRA or a full adapter.
#ifndef LATHE_WORKER_ENGINE_RECIPES_SFT_H_
#define LATHE_WORKER_ENGINE_RECIPES_SFT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/recipes/loop.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// The SFT objective of `spec` on `setup`'s model, for a recipe that runs
// the loop itself (rft.cc): its training and validation data loaded and
// checked. Errors as Train's for the data.
absl::StatusOr<std::unique_ptr<Objective>> MakeSftObjective(
    const RunSpec& spec, const SftSpec& sft, const ModelSetup& setup);

// One SFT run of `spec` (already validated), `sft` its objective section.
// Errors as Train (run.h); may throw c10::Error, which Train catches.
absl::StatusOr<TrainResult> RunSft(const RunSpec& spec, const SftSpec& sft,
                                   const TrainHooks& hooks);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_RECIPES_SFT_H_
