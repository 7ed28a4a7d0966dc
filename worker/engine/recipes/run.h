// The training engine's entry point: one run of a RunSpec
// (spec/run_spec.h), handed to the recipe of its objective (recipes/sft.h
// for "sft", recipes/preference.h for "dpo" and "orpo"; a new method is a
// new recipe file beside them, on the shared loop of recipes/loop.h), and
// what a run reports while it trains and when it ends. Every recipe shares
// these types.
//
// The engine never includes gRPC headers and never lets an exception escape:
// every c10::Error / std::exception is caught here and returned as a Status.
#ifndef LATHE_WORKER_ENGINE_RECIPES_RUN_H_
#define LATHE_WORKER_ENGINE_RECIPES_RUN_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/reports/report.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// Figures for one optimizer step (a metrics event on the server).
struct StepMetrics {
  int64_t step = 0;  // 1-based
  int64_t total_steps = 0;
  double loss = 0;               // mean over trainable tokens of this step
  double token_accuracy = 0;     // argmax == label over trainable tokens
  double learning_rate = 0;      // used for this step
  double grad_norm = 0;          // total gradient norm before clipping
  double tokens_per_second = 0;  // all tokens of the step / step wall time
  int64_t trained_tokens = 0;    // cumulative tokens processed so far
  // A multi-stage run (data.stages): the 1-based stage of this step; 0
  // for a one-stage run.
  int stage = 0;
  // A self-training run (self_training): the 1-based iteration of this
  // step; 0 otherwise.
  int iteration = 0;
  // Set on the steps where a validation pass ran (every
  // evaluation.every_steps
  // and the last step, when there is a validation_file): mean loss and
  // token accuracy over its trainable tokens after this step's update.
  std::optional<double> validation_loss;
  std::optional<double> validation_accuracy;
  // The objective's further figures by name: DPO's "rewards/chosen",
  // "rewards/accuracies", ... (METHODS.md §1.5), and on validation steps
  // the same of the validation pass with "valid_" before the name.
  std::map<std::string, double> values;
};

// One iteration of a self-training run (recipes/rft.h): what its sampling
// kept, then (once trained) its steps and losses.
struct IterationReport {
  int iteration = 0;  // 1-based
  int iterations = 0;
  int64_t prompts = 0;  // training lines sampled from
  int64_t samples = 0;  // prompts x samples_per_prompt
  // RFT: samples whose extracted answer equals the gold one (reward 1; the
  // rest 0). SPIN: generations equal to the real reply.
  int64_t correct = 0;
  // RFT: correct samples left after deduplication. SPIN: the pairs made
  // (non-empty generations).
  int64_t kept = 0;
  // The iteration's training set: RFT's gold replies + kept samples;
  // SPIN's pairs with the previous iteration's.
  int64_t rft_examples = 0;
  double seconds_sampling = 0;
  // Set once the iteration has trained (the report's second call).
  bool trained = false;
  int64_t first_step = 0;  // its steps are (first_step, last_step]
  int64_t last_step = 0;
  double first_loss = 0;
  double last_loss = 0;
  int64_t trained_tokens = 0;
  std::optional<double> validation_loss;

  // RFT: correct / samples, also the mean reward.
  double accepted_fraction() const {
    return samples > 0 ? static_cast<double>(correct) / samples : 0.0;
  }
};

struct TrainResult {
  int64_t steps = 0;
  int64_t trained_tokens = 0;
  // Training examples cut to data.max_seq_len.
  int64_t truncated_examples = 0;
  // Pad positions the training steps of this run computed (trained_tokens
  // counts the real ones); near 0 with packing.
  int64_t padding_tokens = 0;
  // The largest logits block the loss path held in this run, in bytes.
  int64_t loss_peak_bytes = 0;
  double first_loss = 0;
  double last_loss = 0;
  // Mean loss over the trainable tokens of validation_file after training;
  // empty when there is none.
  std::optional<double> validation_loss;
  // evaluation.general_file's loss before and after (METHODS.md §9.1);
  // empty without one, or when resumed from a checkpoint that holds no
  // "before".
  std::optional<ForgettingReport> forgetting;
  // LoRA runs with evaluation.intruder_top_k > 0: every adapted matrix's
  // intruder dimensions (METHODS.md §9.2).
  std::vector<IntruderMatrix> intruders;
  // evaluation.intruder_mitigation_lambda set: how many adapted matrices
  // had intruders and were re-factorised (the result is the mitigated
  // adapter); unset without mitigation.
  std::optional<int> intruders_mitigated;
  // A self-training run: every iteration, trained.
  std::vector<IterationReport> iterations;
};

enum class StopRequest { kNone, kCancel, kCheckpointAndStop };

// A complete checkpoint folder.
struct CheckpointInfo {
  int64_t step = 0;
  std::string dir;                 // <checkpoint.dir>/step-<step>
  std::vector<std::string> files;  // names inside dir, sorted
  StepMetrics metrics;  // of that step; only step and total_steps are set
                        // when this run trained no step before it
  std::optional<double> validation_loss;  // of that step, when one ran
};

// Callbacks from the training thread; each may be empty.
class DataParallel;  // distributed/data_parallel.h

struct TrainHooks {
  std::function<void(const StepMetrics&)> on_step;  // after each step
  std::function<StopRequest()> should_stop;         // before each step
  // After a checkpoint folder is complete (renamed into place).
  std::function<void(const CheckpointInfo&)> on_checkpoint;
  // A self-training run: after an iteration's sampling and selection, and
  // again (trained set) after its training.
  std::function<void(const IterationReport&)> on_iteration;
  // A multi-worker run's process group (rank, world size, collectives):
  // every rank runs the loop on its share of each step, gradients summed
  // across them; only rank 0 calls on_checkpoint and writes checkpoints
  // and the result. Null: one worker. Objectives that cannot shard
  // (Objective::data_parallel) refuse it.
  DataParallel* data_parallel = nullptr;
};

// Trains and writes the result to spec.output.dir: a PEFT adapter
// (adapter_config.json, adapter_model.safetensors) for LoRA, a model folder
// for full fine-tuning; plus the merged model to output.merged_dir when set.
//
// Checkpoints (folder layout in checkpoint/checkpoint.h) are written every
// checkpoint.every_steps steps and when should_stop asks for
// kCheckpointAndStop. With checkpoint.resume_from set, the run continues from
// that checkpoint exactly as the uninterrupted run would have (same weights,
// losses, data order and dropout masks).
//
// Every error carries its kind (error_kind.h: user data with the file's
// field, user options with the setting's API name, the base model, or the
// platform). Codes: INVALID_ARGUMENT for a bad spec or data (naming the
// field, or the file by its data.*_file_name and the line),
// NOT_FOUND / DATA_LOSS for unreadable model or checkpoint files,
// FAILED_PRECONDITION when resume_from was written with different resume
// keys (naming the option), a checkpoint is requested without
// checkpoint.dir, or the device asked for is not there; CANCELLED after
// kCancel, ABORTED ("stopped at step N after checkpointing") after
// kCheckpointAndStop, OUT_OF_RANGE ("nan_loss: …" naming the step) when the
// loss stops being finite, RESOURCE_EXHAUSTED ("out_of_memory: …") when the
// device runs out of memory, INTERNAL for other LibTorch and I/O failures.
absl::StatusOr<TrainResult> Train(const RunSpec& spec,
                                  const TrainHooks& hooks);


}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_RECIPES_RUN_H_
