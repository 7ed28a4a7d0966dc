// The preference recipes (objectives "dpo" and "orpo", METHODS.md §1):
// preference pairs (data/preference_data.h), both rows of a pair in one
// forward pass, sequence log-probabilities through the chunked head
// (loss/chunked_cross_entropy.h ChunkedTokenLogps), the losses of
// loss/preference.h, on the shared loop (loop.h).
//
// DPO's reference model: for a LoRA policy, the same model with the
// adapter bypassed (ForwardOptions::adapters = false, under no_grad; no
// second copy of the weights; TRL's null_ref_context). For full
// fine-tuning, the initial model's log-probabilities of every training and
// validation pair, computed once before the first step (TRL's
// precompute_ref_log_probs) and kept in each checkpoint
// (reference_logps.safetensors), so a resumed run compares against the
// same reference.
//
// As TRL (disable_dropout=True), the policy runs without dropout. A step's
// loss is the mean over its pairs of the per-pair loss (plus RPO's α·NLL,
// the mean cross-entropy of the preferred completions' tokens); IPO's
// log-probabilities, and the rewards reported with them, are length-
// averaged (TRL v0.24). Metrics (StepMetrics::values): rewards/chosen,
// rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
// logps/rejected (and nll_loss with RPO); ORPO adds log_odds_ratio,
// log_odds_chosen and nll_loss. Token accuracy is the argmax accuracy over
// the preferred completions' tokens.
#ifndef LATHE_WORKER_ENGINE_RECIPES_PREFERENCE_H_
#define LATHE_WORKER_ENGINE_RECIPES_PREFERENCE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/recipes/loop.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// The DPO objective of `spec` on `setup`'s model, as MakeSftObjective
// (sft.h): for a recipe that runs the loop itself (rft.cc's SPIN). `dpo`
// must outlive it.
absl::StatusOr<std::unique_ptr<Objective>> MakeDpoObjective(
    const RunSpec& spec, const DpoSpec& dpo, const ModelSetup& setup);

// One DPO / ORPO run of `spec` (validated), as RunSft (sft.h).
absl::StatusOr<TrainResult> RunDpo(const RunSpec& spec, const DpoSpec& dpo,
                                   const TrainHooks& hooks);
absl::StatusOr<TrainResult> RunOrpo(const RunSpec& spec, const OrpoSpec& orpo,
                                    const TrainHooks& hooks);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_RECIPES_PREFERENCE_H_
