// The SFT recipe: chat / prompt-completion / text data, next-token
// cross-entropy on the completion tokens through the chunked head, on the
// shared loop (loop.h).
#include "worker/engine/recipes/sft.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/data/chat_data.h"
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

class SftObjective : public Objective {
 public:
  SftObjective(const RunSpec& spec, const SftSpec& sft,
               const LlamaModel& model, Dataset train,
               std::optional<Dataset> valid, int32_t pad_id)
      : spec_(spec),
        sft_(sft),
        model_(model),
        train_(std::move(train)),
        valid_(std::move(valid)),
        pad_id_(pad_id) {}

  size_t train_examples() const override { return train_.examples.size(); }
  int64_t truncated_examples() const override { return train_.truncated; }

  // The loss normalised by the step's target tokens, over all its
  // micro-batches.
  absl::StatusOr<StepWork> Step(
      const std::vector<std::vector<size_t>>& micro_batches,
      int64_t) override {
    std::vector<Batch> batches;
    StepWork work;
    int64_t step_targets = 0;
    for (const std::vector<size_t>& indices : micro_batches) {
      batches.push_back(ToDevice(
          MakeInput(train_.examples, indices, spec_.data.packing, pad_id_),
          model_.device()));
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
    return work;
  }

  bool has_validation() const override { return valid_.has_value(); }

  // Loss and accuracy over all target tokens of the validation file.
  EvalWork Evaluate() override {
    torch::NoGradGuard no_grad;
    double total = 0;
    int64_t targets = 0, correct = 0;
    const std::vector<Example>& examples = valid_->examples;
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
            .token_accuracy = static_cast<double>(correct) /
                              std::max<int64_t>(targets, 1)};
  }

  std::string Describe() const override {
    return absl::StrCat("SFT, loss chunks of ", sft_.loss_chunk_tokens,
                        " tokens");
  }

 private:
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
};

}  // namespace

absl::StatusOr<TrainResult> RunSft(const RunSpec& spec, const SftSpec& sft,
                                   const TrainHooks& hooks) {
  ASSIGN_OR_RETURN(ModelSetup setup, SetUpModel(spec));
  ASSIGN_OR_RETURN(Dataset train, LoadRunData(spec, setup, false));
  std::optional<Dataset> valid;
  if (!spec.data.validation_file.empty()) {
    ASSIGN_OR_RETURN(valid, LoadRunData(spec, setup, true));
  }
  SftObjective objective(spec, sft, *setup.model, std::move(train),
                         std::move(valid), setup.tokenizer->pad_id());
  return RunLoop(spec, *setup.model, objective, hooks);
}

}  // namespace lathe::engine
