// Training on the model's own generations, in iterations
// (spec.self_training): generate -> select -> train, on the shared loop.
//
// Objective sft: rejection-sampling fine-tuning (RFT, METHODS.md §7.2).
// Iteration i (1-based) of N:
//   1. Sample. For every training line j (chat: every message before the
//      last, an assistant reply that is the gold one; prompt/completion:
//      the prompt), samples_per_prompt completions with the current model
//      (the job's model at i = 1, iteration i - 1's after), sample s seeded
//      RftSampleSeed(spec.seed, i, j, s), ending at EOS or the template's
//      end of turn or max_new_tokens.
//   2. Select (data/rft.h SelectRftPaths): the samples whose extracted
//      answer equals the gold reply's, deduplicated. The iteration's RFT
//      set is, line by line, the gold reply (include_gold) then the kept
//      samples, in the training file's format.
//   3. Train SFT on it (a run of the loop with the spec's optimizer and
//      schedule), from the current weights (init "current") or the job's
//      model again (init "base"); a checkpoint after its last step.
//
// Objective dpo: SPIN (METHODS.md §7.1). Iteration i generates one reply
// per chat line's prompt with the current model (seeded as above, s = 0;
// left-stripped, as SPIN's generate.py), and trains DPO on the pairs
// (chosen: the gold reply, rejected: the generation), plus the previous
// iteration's pairs with accumulate_previous, against the model the
// iteration starts from: its log-probabilities of every pair, computed
// before the first step (DpoSpec::reference "precomputed", for LoRA too),
// so that each iteration's first loss is ln 2.
//
// Steps and checkpoints count across the iterations. A checkpoint holds
// its iteration's training set (iteration_train.jsonl; SPIN also its own
// pairs, iteration_new.jsonl) and self_training.json; a resume continues
// that iteration at its step without generating again (or, from an
// iteration's last checkpoint, generates the next iteration).
#ifndef LATHE_WORKER_ENGINE_RECIPES_RFT_H_
#define LATHE_WORKER_ENGINE_RECIPES_RFT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// In every checkpoint of a self-training run: the iteration's training set,
// SPIN's pairs of the iteration alone, and {"iteration", "step_offset",
// "iterations": [IterationReport JSON...]}.
inline constexpr char kIterationTrainFile[] = "iteration_train.jsonl";
inline constexpr char kIterationNewFile[] = "iteration_new.jsonl";
inline constexpr char kSelfTrainingStateFile[] = "self_training.json";

// The seed of sample `sample` of training line `line` (0-based) in
// iteration `iteration` (1-based) of a run seeded `seed`: a SplitMix64
// chain, so that every sample has its own reproducible stream.
uint64_t RftSampleSeed(uint64_t seed, int iteration, int64_t line,
                       int sample);

// One self-training run of `spec` (validated; spec.self_training.iterations
// > 0, objective sft or dpo). Errors as Train; INVALID_ARGUMENT (user data,
// "training_file") for a line whose gold reply has no answer the extractor
// finds (RFT), a text line (no prompt) or, for SPIN, a prompt/completion
// line; FAILED_PRECONDITION (user options) when an iteration has nothing to
// train on ("self_training.include_gold"; SPIN:
// "self_training.max_new_tokens", every generation empty).
absl::StatusOr<TrainResult> RunSelfTraining(const RunSpec& spec,
                                            const TrainHooks& hooks);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_RECIPES_RFT_H_
