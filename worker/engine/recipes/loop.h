// The training loop every recipe shares: set up the model, or resume ->
// for each step: the objective's forward and backward over the step's
// micro-batches, clip, optimizer step, schedule, log, evaluate, checkpoint
// -> export. A recipe (sft.cc, preference.cc) loads its data, implements
// Objective (what a step computes from the examples the data cursor
// gives it) and calls RunLoop; the loop never knows which objective runs.
#ifndef LATHE_WORKER_ENGINE_RECIPES_LOOP_H_
#define LATHE_WORKER_ENGINE_RECIPES_LOOP_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/mixture.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/shared_base.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/reports/reports.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

// The model a run trains, on its device, with its adapter attached, and
// the text side of the base.
struct ModelSetup {
  // LoRA and prompt tuning: the frozen base the model's weights are, shared
  // with the process's other runs over it (model/shared_base.h).
  std::shared_ptr<const SharedBase> base;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  // An error when the base has no known chat template: a recipe reports it
  // only if its data holds chat lines.
  absl::StatusOr<ChatTemplate> chat_template = absl::UnknownError("unset");
};

// Loads the base (errors of the kind kModel), places it (spec.device: a
// frozen LoRA base in the compute dtype, float32 masters otherwise), seeds
// torch's generator with spec.seed and attaches the adapter.
// LoRA and prompt-tuning runs build their model over the process's shared
// copy of the base (AcquireSharedBase). The model gets a generator of its
// own for its dropout, continuing the seeded stream after the adapter's
// initialization.
absl::StatusOr<ModelSetup> SetUpModel(const RunSpec& spec);

// Seeds the generator `model`'s dropout draws from (torch::manual_seed's
// effect on it; torch::manual_seed itself when the model has none).
void ReseedGenerator(const LlamaModel& model, uint64_t seed);

// What one optimizer step computed, before the update.
struct StepWork {
  double loss = 0;            // the step's loss, as the objective defines it
  double token_accuracy = 0;  // argmax == label over the trained tokens
  int64_t tokens = 0;         // real tokens of the step's forward passes
  int64_t padding = 0;        // pad tokens computed
  int64_t loss_peak_bytes = 0;  // largest logits block the loss held
  // What `loss` (and `values`) is a mean over, and token_accuracy's
  // denominator: the step's target tokens for SFT; pairs, and the chosen
  // replies' tokens, for preference objectives. Data-parallel ranks weigh
  // their shares by them (distributed/data_parallel.h).
  double weight = 0;
  double accuracy_weight = 0;
  // Further figures of the objective, by name ("rewards/margins"): carried
  // to StepMetrics::values and the metrics events.
  std::map<std::string, double> values;
};

// A validation pass's figures; `values` go to StepMetrics::values with
// "valid_" before each name.
struct EvalWork {
  double loss = 0;
  double token_accuracy = 0;
  std::map<std::string, double> values;
};

// What a recipe's objective does in the loop. Called on the training thread.
class Objective {
 public:
  virtual ~Objective() = default;

  // Training examples: the data cursor shuffles their indices.
  virtual size_t train_examples() const = 0;
  // For a mixture (data/mixture.h): how each epoch draws from the training
  // examples (the sources end to end); null = one shuffled pass. Must
  // outlive the loop.
  virtual const MixturePlan* mixture() const { return nullptr; }
  // Examples of the training file cut to fit (for TrainResult).
  virtual int64_t truncated_examples() const { return 0; }

  // Forward and backward over `micro_batches` (indices into the training
  // examples) for optimizer step `step` (1-based), accumulating gradients
  // into the trained tensors (zeroed before); the step's loss is the
  // objective's mean over the whole step. OUT_OF_RANGE is not for this:
  // the loop checks the loss is finite.
  virtual absl::StatusOr<StepWork> Step(
      const std::vector<std::vector<size_t>>& micro_batches, int64_t step) = 0;

  // Whether Evaluate has data to run on.
  virtual bool has_validation() const { return false; }
  // A validation pass, without gradients or dropout.
  virtual EvalWork Evaluate() { return {}; }

  // Before the first step of a fresh run (not on resume): work that must
  // see the untrained model, e.g. reference log-probabilities.
  virtual absl::Status Prepare() { return absl::OkStatus(); }
  // The objective's own state, written into each checkpoint folder (beside
  // the weights) and read back on resume instead of Prepare.
  virtual absl::Status SaveState(const std::string& dir) const {
    return absl::OkStatus();
  }
  virtual absl::Status LoadState(const std::string& dir) {
    return absl::OkStatus();
  }

  // Whether Step's gradients are a weighted mean (StepWork::weight) of
  // independent examples' terms, so that ranks can each take a share of a
  // step and sum (multi-worker jobs).
  virtual bool data_parallel() const { return false; }

  // A few words for the run's log line ("SFT, loss chunks of 1024 tokens").
  virtual std::string Describe() const = 0;
};

// The optimizer steps of a run whose epochs hold `epoch_examples`
// examples: ceil(epoch_examples / (batch_size x accumulation)) x n_epochs.
int64_t TotalSteps(const RunSpec& spec, size_t epoch_examples);

// The forgetting report's held-out general set (evaluation.general_file),
// as chat / prompt-completion / text examples without prompt tuning's
// placeholders.
struct GeneralSet {
  std::vector<Example> examples;
  int32_t pad_id = 0;
};

// evaluation.general_file loaded with the base's tokenizer and template
// (errors of the kind kUserData naming "general_file"), or nullopt without
// one.
absl::StatusOr<std::optional<GeneralSet>> LoadGeneralSet(
    const RunSpec& spec, const ModelSetup& setup);

// The forgetting report's "before": the base model's loss on `general`
// (the adapter bypassed, no virtual tokens), over the tokens
// evaluation.general_tokens names, in batches of data.batch_size.
HeldOutLoss GeneralLossBefore(const LlamaModel& model, const GeneralSet& general,
                              const RunSpec& spec);

// The forgetting report: `before` and the trained model's loss on
// `general` now (with its virtual tokens, if any).
ForgettingReport ForgettingAfter(const LlamaModel& model, const GeneralSet& general,
                                 const RunSpec& spec, const HeldOutLoss& before);

// One stage of a run (spec/run_spec.h StageSpec): its spec (StageRunSpec,
// or the run's own for a one-stage run) and its objective, over that
// stage's data. Both must outlive the loop.
struct LoopStage {
  const RunSpec* spec = nullptr;
  Objective* objective = nullptr;
  std::string name;  // "general"; "" for a one-stage run
};

// Trains `model` (from SetUpModel) through `stages` in order (at least
// one) as Train (run.h) describes, writing checkpoints and the result. A
// stage after the first starts from the weights the one before left, with
// a fresh optimizer, its own learning-rate schedule over its steps and
// torch's generator seeded with spec.seed again: as a separate run from
// those weights would. Steps, checkpoints and metrics count across the
// stages; a checkpoint holds the state of the stage that wrote its last
// step, and a resume continues in that stage (or starts the next one, at
// a stage's end).
//
// With `general` (LoadGeneralSet), the loop measures its loss with the base
// model (the adapter bypassed, no virtual tokens) before the first step of
// a fresh run, keeps that figure in every checkpoint, and measures the
// trained model's after the last: TrainResult::forgetting. A LoRA run
// counts its intruder dimensions after training (evaluation.intruder_*).
absl::StatusOr<TrainResult> RunLoop(const RunSpec& spec, LlamaModel& model,
                                    const std::vector<LoopStage>& stages,
                                    const TrainHooks& hooks,
                                    const GeneralSet* general = nullptr);

// A one-stage run of `objective`.
inline absl::StatusOr<TrainResult> RunLoop(const RunSpec& spec,
                                           LlamaModel& model,
                                           Objective& objective,
                                           const TrainHooks& hooks,
                                           const GeneralSet* general = nullptr) {
  return RunLoop(spec, model, {LoopStage{&spec, &objective, ""}}, hooks,
                 general);
}

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_RECIPES_LOOP_H_
