// The SFT recipe: chat / prompt-completion / text data, next-token
// cross-entropy on the completion tokens through the chunked head, on the
// shared loop (loop.h).
#include "worker/engine/recipes/sft.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/adapters/prompt_tuning.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/masked_thought.h"
#include "worker/engine/data/mixture.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/loss/chunked_cross_entropy.h"
#include "worker/engine/recipes/loop.h"

namespace lathe::engine {

namespace {

absl::StatusOr<Dataset> LoadRunData(const RunSpec& spec,
                                    const ModelSetup& setup, bool validation) {
  const DataSpec& d = spec.data;
  absl::StatusOr<Dataset> data = LoadChatDataset(
      validation ? d.validation_file : d.training_file, *setup.tokenizer,
      setup.chat_template, d.max_seq_len,
      validation ? d.validation_file_name : d.training_file_name);
  if (!data.ok()) {
    return WithErrorKind(data.status(), ErrorKind::kUserData,
                         validation ? "validation_file" : "training_file");
  }
  return data;
}

// A mixture's sources (data/mixture.h) and their validation files, by
// source name.
struct MixtureRunData {
  MixtureData train;
  std::vector<std::pair<std::string, Dataset>> valid;
};

absl::StatusOr<MixtureRunData> LoadMixtureRunData(const RunSpec& spec,
                                                  const ModelSetup& setup) {
  const DataSpec& d = spec.data;
  MixtureRunData out;
  absl::StatusOr<MixtureData> train =
      LoadMixture(d, *setup.tokenizer, setup.chat_template, spec.seed);
  if (!train.ok()) {
    return WithErrorKind(train.status(), ErrorKind::kUserData,
                         "training_mixture");
  }
  out.train = *std::move(train);
  for (const MixtureSourceSpec& source : d.mixture.sources) {
    if (source.validation_file.empty()) continue;
    absl::StatusOr<Dataset> valid = LoadChatDataset(
        source.validation_file, *setup.tokenizer, setup.chat_template,
        d.max_seq_len, source.validation_file_name);
    if (!valid.ok()) {
      return WithErrorKind(valid.status(), ErrorKind::kUserData,
                           "training_mixture");
    }
    out.valid.emplace_back(source.name, *std::move(valid));
  }
  return out;
}

class SftObjective : public Objective {
 public:
  // `mixture`: how epochs draw from `train` when it is a mixture's sources;
  // `source_valid`: their validation sets. `mask_id`: Masked Thought's
  // token, when sft.masked_thought is on.
  SftObjective(const RunSpec& spec, const SftSpec& sft,
               const LlamaModel& model, Dataset train,
               std::optional<Dataset> valid, int32_t pad_id,
               std::optional<MixturePlan> mixture = std::nullopt,
               std::vector<std::pair<std::string, Dataset>> source_valid = {},
               int64_t mask_id = 0)
      : spec_(spec),
        sft_(sft),
        model_(model),
        train_(std::move(train)),
        valid_(std::move(valid)),
        pad_id_(pad_id),
        mixture_(std::move(mixture)),
        source_valid_(std::move(source_valid)),
        mask_id_(mask_id),
        total_steps_(TotalSteps(spec, mixture_.has_value()
                                          ? mixture_->EpochSize()
                                          : train_.examples.size())) {}

  size_t train_examples() const override { return train_.examples.size(); }
  const MixturePlan* mixture() const override {
    return mixture_.has_value() ? &*mixture_ : nullptr;
  }
  int64_t truncated_examples() const override { return train_.truncated; }

  // The loss normalised by the step's target tokens, over all its
  // micro-batches.
  absl::StatusOr<StepWork> Step(
      const std::vector<std::vector<size_t>>& micro_batches,
      int64_t step) override {
    std::vector<Batch> batches;
    StepWork work;
    int64_t step_targets = 0;
    const MaskedThoughtSpec& mt = sft_.masked_thought;
    // Masked Thought: a mask drawn from (seed, step, micro-batch) alone,
    // so a resumed run masks as the uninterrupted one.
    const double mask_rate = MaskRateAt(mt, step - 1, total_steps_);
    for (const std::vector<size_t>& indices : micro_batches) {
      Batch batch =
          MakeInput(train_.examples, indices, spec_.data.packing, pad_id_);
      if (mt.mask_rate > 0) {
        MaskTargets(&batch, mask_rate, mask_id_, spec_.seed, step - 1,
                    static_cast<int64_t>(batches.size()));
      }
      batches.push_back(ToDevice(std::move(batch), model_.device()));
      work.tokens += batches.back().tokens;
      work.padding += batches.back().padding;
      step_targets += Targets(batches.back());
    }
    double loss_sum = 0;
    int64_t correct = 0;
    for (const Batch& batch : batches) {
      if (Targets(batch) == 0) continue;
      LossStats stats = Loss(batch, /*training=*/true);
      work.loss_peak_bytes =
          std::max(work.loss_peak_bytes, stats.peak_logits_bytes);
      const double share = static_cast<double>(stats.targets) / step_targets;
      (stats.loss * share).backward();
      loss_sum += stats.loss.item<double>() * stats.targets;
      correct += stats.correct;
    }
    work.loss = loss_sum / std::max<int64_t>(step_targets, 1);
    work.token_accuracy =
        static_cast<double>(correct) / std::max<int64_t>(step_targets, 1);
    work.weight = static_cast<double>(step_targets);
    work.accuracy_weight = work.weight;
    return work;
  }

  bool has_validation() const override {
    return valid_.has_value() || !source_valid_.empty();
  }
  bool data_parallel() const override { return true; }

  // The validation file's loss and accuracy; each mixture source's loss as
  // "loss/<name>" (valid_loss/<name> in the metrics), and without a
  // validation file, the loss and accuracy over all of them together.
  EvalWork Evaluate() override {
    EvalWork work;
    int64_t all_targets = 0;
    double all_loss = 0, all_correct = 0;
    for (const auto& [name, data] : source_valid_) {
      const Pass pass = Validate(data);
      work.values[absl::StrCat("loss/", name)] = pass.loss;
      all_loss += pass.loss * pass.targets;
      all_correct += pass.accuracy * pass.targets;
      all_targets += pass.targets;
    }
    if (valid_.has_value()) {
      const Pass pass = Validate(*valid_);
      work.loss = pass.loss;
      work.token_accuracy = pass.accuracy;
    } else if (all_targets > 0) {
      work.loss = all_loss / all_targets;
      work.token_accuracy = all_correct / all_targets;
    }
    return work;
  }

  std::string Describe() const override {
    return absl::StrCat(
        "SFT, loss chunks of ", sft_.loss_chunk_tokens, " tokens",
        mixture_.has_value()
            ? absl::StrCat(", a ", spec_.data.mixture.strategy,
                           " mixture of ", spec_.data.mixture.sources.size(),
                           " sources, ", mixture_->EpochSize(),
                           " examples an epoch")
            : "",
        sft_.masked_thought.mask_rate > 0
            ? absl::StrCat(", masked thought p=", sft_.masked_thought.mask_rate,
                           " ", sft_.masked_thought.schedule, " mask id ",
                           mask_id_)
            : "");
  }

 private:
  struct Pass {
    double loss = 0;
    double accuracy = 0;
    int64_t targets = 0;
  };

  // Loss and accuracy over all target tokens of `data`.
  Pass Validate(const Dataset& data) const {
    torch::NoGradGuard no_grad;
    double total = 0;
    int64_t targets = 0, correct = 0;
    const std::vector<Example>& examples = data.examples;
    const size_t batch_size = spec_.data.batch_size;
    for (size_t first = 0; first < examples.size(); first += batch_size) {
      std::vector<size_t> indices(
          std::min<size_t>(batch_size, examples.size() - first));
      std::iota(indices.begin(), indices.end(), first);
      Batch batch =
          ToDevice(MakeInput(examples, indices, spec_.data.packing, pad_id_),
                   model_.device());
      if (Targets(batch) == 0) continue;
      LossStats stats = Loss(batch, /*training=*/false);
      total += stats.loss.item<double>() * stats.targets;
      targets += stats.targets;
      correct += stats.correct;
    }
    return {.loss = total / std::max<int64_t>(targets, 1),
            .accuracy = static_cast<double>(correct) /
                        std::max<int64_t>(targets, 1),
            .targets = targets};
  }

  // Through the final hidden states and the chunked head.
  LossStats Loss(const Batch& batch, bool training) const {
    const torch::Tensor hidden = model_.Hidden(
        batch.input_ids, batch.layout,
        {.training = training,
         .checkpoint_layers =
             training && spec_.device.activation_checkpointing});
    return ChunkedCausalLmLoss(hidden, model_.head(), batch,
                               sft_.loss_chunk_tokens);
  }

  const RunSpec& spec_;
  const SftSpec& sft_;
  const LlamaModel& model_;
  Dataset train_;
  std::optional<Dataset> valid_;
  int32_t pad_id_;
  std::optional<MixturePlan> mixture_;
  std::vector<std::pair<std::string, Dataset>> source_valid_;
  int64_t mask_id_;
  int64_t total_steps_;  // for the mask rate's schedule
};

}  // namespace

namespace {

// The objective of `spec` (the run's, or one stage's: StageRunSpec) on
// `setup`'s model: its training data, the validation file's and its
// sources' validation sets.
absl::StatusOr<std::unique_ptr<SftObjective>> MakeObjective(
    const RunSpec& spec, const SftSpec& sft, const ModelSetup& setup) {
  Dataset train;
  std::optional<MixturePlan> plan;
  std::vector<std::pair<std::string, Dataset>> source_valid;
  if (spec.data.mixture.sources.empty()) {
    ASSIGN_OR_RETURN(train, LoadRunData(spec, setup, false));
  } else {
    ASSIGN_OR_RETURN(MixtureRunData mixture, LoadMixtureRunData(spec, setup));
    train = {std::move(mixture.train.examples), mixture.train.truncated};
    plan = std::move(mixture.train.plan);
    source_valid = std::move(mixture.valid);
  }
  std::optional<Dataset> valid;
  if (!spec.data.validation_file.empty()) {
    ASSIGN_OR_RETURN(valid, LoadRunData(spec, setup, true));
  }
  if (const int n = setup.model->num_virtual_tokens(); n > 0) {
    PrependVirtualTokens(train.examples, n);
    if (valid) PrependVirtualTokens(valid->examples, n);
    for (auto& [name, data] : source_valid) {
      PrependVirtualTokens(data.examples, n);
    }
  }
  int64_t mask_id = 0;
  if (sft.masked_thought.mask_rate > 0) {
    ASSIGN_OR_RETURN(
        mask_id,
        WithErrorKind(MaskTokenId(sft.masked_thought.mask_token,
                                  setup.tokenizer->pad_id(),
                                  setup.model->config().vocab_size),
                      ErrorKind::kUserOptions,
                      "method.supervised.masked_thought.mask_token"));
  }
  return std::make_unique<SftObjective>(
      spec, sft, *setup.model, std::move(train), std::move(valid),
      setup.tokenizer->pad_id(), std::move(plan), std::move(source_valid),
      mask_id);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Objective>> MakeSftObjective(
    const RunSpec& spec, const SftSpec& sft, const ModelSetup& setup) {
  ASSIGN_OR_RETURN(std::unique_ptr<SftObjective> objective,
                   MakeObjective(spec, sft, setup));
  return std::unique_ptr<Objective>(std::move(objective));
}

absl::StatusOr<TrainResult> RunSft(const RunSpec& spec, const SftSpec& sft,
                                   const TrainHooks& hooks) {
  ASSIGN_OR_RETURN(ModelSetup setup, SetUpModel(spec));
  ASSIGN_OR_RETURN(const std::optional<GeneralSet> general,
                   LoadGeneralSet(spec, setup));
  const GeneralSet* general_set = general.has_value() ? &*general : nullptr;
  if (spec.data.stages.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<SftObjective> objective,
                     MakeObjective(spec, sft, setup));
    return RunLoop(spec, *setup.model, *objective, hooks, general_set);
  }
  // DMT and other multi-stage runs: every stage's data is loaded (and
  // checked) before the first step.
  const size_t n = spec.data.stages.size();
  std::vector<RunSpec> specs;
  specs.reserve(n);  // the objectives keep references into it
  std::vector<std::unique_ptr<SftObjective>> objectives;
  std::vector<LoopStage> stages;
  for (size_t i = 0; i < n; ++i) {
    specs.push_back(StageRunSpec(spec, i));
    // Errors name the stage's source by its file_name.
    ASSIGN_OR_RETURN(std::unique_ptr<SftObjective> objective,
                     MakeObjective(specs.back(), sft, setup));
    objectives.push_back(std::move(objective));
    const std::string& name = spec.data.stages[i].name;
    stages.push_back({&specs.back(), objectives.back().get(),
                      name.empty() ? absl::StrCat("stage-", i + 1) : name});
  }
  return RunLoop(spec, *setup.model, stages, hooks, general_set);
}

}  // namespace lathe::engine
