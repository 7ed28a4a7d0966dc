#include "worker/engine/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/batch.h"
#include "worker/engine/chat_data.h"
#include "worker/engine/llama.h"
#include "worker/engine/lora.h"
#include "worker/engine/schedule.h"
#include "worker/engine/tokenizer.h"

namespace lathe::engine {
namespace {

absl::Status ValidateOptions(const TrainOptions& o) {
  auto invalid = [](const std::string& field, const std::string& rule) {
    return absl::InvalidArgumentError(
        absl::StrCat("field \"", field, "\" ", rule));
  };
  if (o.model_dir.empty()) return invalid("model_dir", "is required");
  if (o.training_file.empty()) return invalid("training_file", "is required");
  if (o.output_dir.empty()) return invalid("output_dir", "is required");
  if (o.n_epochs <= 0) return invalid("n_epochs", "must be positive");
  if (o.batch_size <= 0) return invalid("batch_size", "must be positive");
  if (!(o.learning_rate > 0))
    return invalid("learning_rate", "must be positive");
  if (o.warmup_steps < 0) return invalid("warmup_steps", "must be >= 0");
  if (!(o.max_grad_norm > 0))
    return invalid("max_grad_norm", "must be positive");
  if (o.max_seq_len < 2) return invalid("max_seq_len", "must be at least 2");
  return ValidateLoraOptions(o.lora);
}

// Everything a run needs before its first step.
struct Setup {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  Dataset train;
  std::optional<Dataset> valid;
};

absl::StatusOr<Setup> SetUp(const TrainOptions& o) {
  Setup setup;
  ASSIGN_OR_RETURN(setup.model, LlamaModel::Load(o.model_dir));
  ASSIGN_OR_RETURN(setup.tokenizer, Tokenizer::Load(o.model_dir));
  if (setup.tokenizer->vocab_size() > setup.model->config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        o.model_dir, ": the tokenizer has ", setup.tokenizer->vocab_size(),
        " tokens but config.json's vocab_size is ",
        setup.model->config().vocab_size));
  }
  ASSIGN_OR_RETURN(ChatTemplate chat_template,
                   ChatTemplate::Detect(setup.tokenizer->chat_template(),
                                        setup.tokenizer->eos_token()));
  ASSIGN_OR_RETURN(setup.train,
                   LoadChatDataset(o.training_file, *setup.tokenizer,
                                   chat_template, o.max_seq_len));
  if (!o.validation_file.empty()) {
    ASSIGN_OR_RETURN(setup.valid,
                     LoadChatDataset(o.validation_file, *setup.tokenizer,
                                     chat_template, o.max_seq_len));
  }
  torch::manual_seed(o.seed);
  RETURN_IF_ERROR(AttachLora(*setup.model, o.lora));
  return setup;
}

// The `b`-th batch of `order`: order[b * size, (b + 1) * size), cut at its end.
std::vector<size_t> BatchIndices(const std::vector<size_t>& order, int64_t b,
                                 int size) {
  const size_t first = b * size;
  return std::vector<size_t>(
      order.begin() + first,
      order.begin() + std::min(order.size(), first + size));
}

// Mean loss over all target tokens of `data`, without gradients or dropout.
double EvaluateLoss(const LlamaModel& model, const Dataset& data,
                    int batch_size, int32_t pad_id) {
  torch::NoGradGuard no_grad;
  std::vector<size_t> order(data.examples.size());
  std::iota(order.begin(), order.end(), 0);
  double total = 0;
  int64_t targets = 0;
  for (int64_t b = 0; b * batch_size < static_cast<int64_t>(order.size());
       ++b) {
    Batch batch =
        MakeBatch(data.examples, BatchIndices(order, b, batch_size), pad_id);
    LossStats stats = CausalLmLoss(
        model.Forward(batch.input_ids, batch.attention_mask, false), batch);
    total += stats.loss.item<double>() * stats.targets;
    targets += stats.targets;
  }
  return total / targets;
}

// One optimizer step on `batch`: forward, loss, backward, clip, update.
// Fills the loss, accuracy and gradient norm of `m`.
void OptimizerStep(const LlamaModel& model, torch::optim::Optimizer& optimizer,
                   std::vector<torch::Tensor>& params, const Batch& batch,
                   double max_grad_norm, StepMetrics& m) {
  torch::Tensor logits =
      model.Forward(batch.input_ids, batch.attention_mask, /*training=*/true);
  LossStats stats = CausalLmLoss(logits, batch);
  optimizer.zero_grad();
  stats.loss.backward();
  m.grad_norm = torch::nn::utils::clip_grad_norm_(params, max_grad_norm);
  optimizer.step();
  m.loss = stats.loss.item<double>();
  m.token_accuracy = static_cast<double>(stats.correct) / stats.targets;
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
}

absl::StatusOr<TrainResult> RunTraining(const TrainOptions& o,
                                        const StepCallback& on_step,
                                        const StopCheck& should_stop) {
  RETURN_IF_ERROR(ValidateOptions(o));
  ASSIGN_OR_RETURN(Setup setup, SetUp(o));
  LlamaModel& model = *setup.model;
  const std::vector<Example>& examples = setup.train.examples;
  const int32_t pad_id = setup.tokenizer->pad_id();

  std::vector<torch::Tensor> params = LoraParameters(model);
  torch::optim::AdamW optimizer(
      params, torch::optim::AdamWOptions(o.learning_rate).weight_decay(0.0));
  const int64_t steps_per_epoch =
      (static_cast<int64_t>(examples.size()) + o.batch_size - 1) / o.batch_size;
  const int64_t total_steps = steps_per_epoch * o.n_epochs;
  spdlog::info(
      "training LoRA r={} alpha={} on {} ({} examples, {} steps, lr {}, "
      "batch {}, max_seq_len {}, seed {})",
      o.lora.rank, o.lora.alpha, o.model_dir, examples.size(), total_steps,
      o.learning_rate, o.batch_size, o.max_seq_len, o.seed);

  std::mt19937_64 rng(o.seed);
  std::vector<size_t> order(examples.size());
  TrainResult result;
  result.truncated_examples = setup.train.truncated;
  for (int epoch = 0; epoch < o.n_epochs; ++epoch) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t b = 0; b < steps_per_epoch; ++b) {
      if (should_stop && should_stop()) {
        return absl::CancelledError(
            absl::StrCat("stopped after ", result.steps, " steps"));
      }
      const auto start = std::chrono::steady_clock::now();
      StepMetrics m;
      m.step = result.steps + 1;
      m.total_steps = total_steps;
      m.learning_rate = LearningRateAt(result.steps, total_steps,
                                       o.warmup_steps, o.learning_rate);
      SetLearningRate(optimizer, m.learning_rate);
      Batch batch =
          MakeBatch(examples, BatchIndices(order, b, o.batch_size), pad_id);
      OptimizerStep(model, optimizer, params, batch, o.max_grad_norm, m);

      const std::chrono::duration<double> seconds =
          std::chrono::steady_clock::now() - start;
      m.tokens_per_second = batch.tokens / std::max(seconds.count(), 1e-9);
      result.steps = m.step;
      result.trained_tokens += batch.tokens;
      m.trained_tokens = result.trained_tokens;
      if (m.step == 1) result.first_loss = m.loss;
      result.last_loss = m.loss;
      if (on_step) on_step(m);
    }
  }
  if (setup.valid.has_value()) {
    result.validation_loss =
        EvaluateLoss(model, *setup.valid, o.batch_size, pad_id);
  }
  RETURN_IF_ERROR(
      SaveAdapter(model, o.lora,
                  o.base_model_name.empty() ? o.model_dir : o.base_model_name,
                  o.output_dir));
  return result;
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainOptions& options,
                                  const StepCallback& on_step,
                                  const StopCheck& should_stop) {
  try {
    return RunTraining(options, on_step, should_stop);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("LibTorch error: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what()));
  }
}

}  // namespace lathe::engine
