// The SFT recipe, top to bottom: set up (model, tokenizer, data, adapter,
// optimizer) or resume -> for each step: batch, forward, loss, backward,
// clip, optimizer step, schedule, log, evaluate, checkpoint -> export.
// Each component gets only its own section of the spec.
#include "worker/engine/recipes/sft.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/checkpoint/run_checkpoint.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/cursor.h"
#include "worker/engine/data/masked_thought.h"
#include "worker/engine/data/mixture.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/loss/chunked_cross_entropy.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/optim/adamw.h"
#include "worker/engine/optim/schedule.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// Marks a failure as `kind` (see error_kind.h).
template <typename T>
absl::StatusOr<T> Kind(absl::StatusOr<T> result, ErrorKind kind,
                       absl::string_view field = "") {
  if (result.ok()) return result;
  return WithErrorKind(result.status(), kind, field);
}

// Everything a run needs before its first step.
struct Setup {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  Dataset train;  // for a mixture: its sources end to end
  std::optional<Dataset> valid;
  std::optional<MixturePlan> mixture;  // how epochs draw from the sources
  // The validation files of the mixture's sources, by source name.
  std::vector<std::pair<std::string, Dataset>> source_valid;
  int64_t mask_id = 0;  // Masked Thought's replacement token
};

absl::StatusOr<Setup> SetUp(const RunSpec& spec) {
  const ModelSpec& m = spec.model;
  const DataSpec& d = spec.data;
  Setup setup;
  ASSIGN_OR_RETURN(const Placement placement, ResolvePlacement(spec.device));
  // The base model's files are the operator's: a broken one is never
  // blamed on the user's data.
  ASSIGN_OR_RETURN(setup.model,
                   Kind(LlamaModel::Load(m.dir), ErrorKind::kModel));
  ASSIGN_OR_RETURN(setup.tokenizer,
                   Kind(Tokenizer::Load(m.dir), ErrorKind::kModel));
  if (setup.tokenizer->vocab_size() > setup.model->config().vocab_size) {
    return WithErrorKind(absl::InvalidArgumentError(absl::StrCat(
                             m.dir, ": the tokenizer has ",
                             setup.tokenizer->vocab_size(),
                             " tokens but config.json's vocab_size is ",
                             setup.model->config().vocab_size)),
                         ErrorKind::kModel);
  }
  // An unknown template is an error only if the data holds chat lines.
  const absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplateFor(*setup.tokenizer, m.chat_template);
  if (!d.mixture.sources.empty()) {
    absl::StatusOr<MixtureData> mixture =
        LoadMixture(d, *setup.tokenizer, chat_template, spec.seed);
    if (!mixture.ok()) {
      return WithErrorKind(mixture.status(), ErrorKind::kUserData,
                           "training_mixture");
    }
    setup.train = {std::move(mixture->examples), mixture->truncated};
    setup.mixture = std::move(mixture->plan);
    for (const MixtureSourceSpec& source : d.mixture.sources) {
      if (source.validation_file.empty()) continue;
      absl::StatusOr<Dataset> valid =
          LoadChatDataset(source.validation_file, *setup.tokenizer,
                          chat_template, d.max_seq_len,
                          source.validation_file_name);
      if (!valid.ok()) {
        return WithErrorKind(valid.status(), ErrorKind::kUserData,
                             "training_mixture");
      }
      setup.source_valid.emplace_back(source.name, *std::move(valid));
    }
  } else {
    absl::StatusOr<Dataset> train =
        LoadChatDataset(d.training_file, *setup.tokenizer, chat_template,
                        d.max_seq_len, d.training_file_name);
    if (!train.ok()) {
      return WithErrorKind(train.status(), ErrorKind::kUserData,
                           "training_file");
    }
    setup.train = *std::move(train);
  }
  const MaskedThoughtSpec& masked_thought =
      std::get<SftSpec>(spec.objective).masked_thought;
  if (masked_thought.mask_rate > 0) {
    ASSIGN_OR_RETURN(
        setup.mask_id,
        Kind(MaskTokenId(masked_thought.mask_token, setup.tokenizer->pad_id(),
                         setup.model->config().vocab_size),
             ErrorKind::kUserOptions,
             "method.supervised.masked_thought.mask_token"));
  }
  if (!d.validation_file.empty()) {
    absl::StatusOr<Dataset> valid =
        LoadChatDataset(d.validation_file, *setup.tokenizer, chat_template,
                        d.max_seq_len, d.validation_file_name);
    if (!valid.ok()) {
      return WithErrorKind(valid.status(), ErrorKind::kUserData,
                           "validation_file");
    }
    setup.valid = *std::move(valid);
  }
  // Mixed precision: a frozen base is held in the compute dtype; what is
  // trained stays float32 (masters, and AdamW's moments with them).
  setup.model->Place(placement.device,
                     Lora(spec.adapter) != nullptr ? placement.compute
                                                   : torch::kFloat32,
                     placement.compute);
  torch::manual_seed(spec.seed);
  RETURN_IF_ERROR(MakeTrainable(*setup.model, spec.adapter));
  return setup;
}

// examples[indices] as the model's input: packed or padded.
Batch MakeInput(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, const DataSpec& data,
                int32_t pad_id) {
  return data.packing ? PackBatch(examples, indices)
                   : MakeBatch(examples, indices, pad_id);
}

// How the recipe computes a batch's loss: through the final hidden states
// and the chunked head.
struct LossPath {
  const SftSpec& sft;
  const DeviceSpec& device;

  LossStats operator()(const LlamaModel& model, const Batch& batch,
                       bool training) const {
    const torch::Tensor hidden = model.Hidden(
        batch.input_ids, batch.layout,
        {.training = training,
         .checkpoint_layers = training && device.activation_checkpointing});
    return ChunkedCausalLmLoss(hidden, model.head(), batch,
                               sft.loss_chunk_tokens);
  }
};

struct EvalStats {
  double loss = 0;      // mean over target tokens
  double accuracy = 0;  // argmax == label over target tokens
  int64_t targets = 0;
};

// Loss and accuracy over all target tokens of `data`, without gradients or
// dropout.
EvalStats Evaluate(const LlamaModel& model, const Dataset& data,
                   const DataSpec& data_spec, const LossPath& loss,
                   int32_t pad_id) {
  torch::NoGradGuard no_grad;
  double total = 0;
  int64_t targets = 0, correct = 0;
  const size_t batch_size = data_spec.batch_size;
  for (size_t first = 0; first < data.examples.size(); first += batch_size) {
    std::vector<size_t> indices(
        std::min<size_t>(batch_size, data.examples.size() - first));
    std::iota(indices.begin(), indices.end(), first);
    Batch batch = ToDevice(MakeInput(data.examples, indices, data_spec, pad_id),
                           model.device());
    if (Targets(batch) == 0) continue;
    LossStats stats = loss(model, batch, /*training=*/false);
    total += stats.loss.item<double>() * stats.targets;
    targets += stats.targets;
    correct += stats.correct;
  }
  return {total / std::max<int64_t>(targets, 1),
          static_cast<double>(correct) / std::max<int64_t>(targets, 1),
          targets};
}

// The validation pass of a step: data.validation_file's loss and accuracy
// when there is one; each mixture source's loss, and, without
// validation_file, the loss and accuracy over all of them together.
void RunValidation(const LlamaModel& model, const Setup& setup,
                   const DataSpec& data_spec, const LossPath& loss,
                   int32_t pad_id, StepMetrics& m) {
  if (setup.valid.has_value()) {
    const EvalStats eval =
        Evaluate(model, *setup.valid, data_spec, loss, pad_id);
    m.validation_loss = eval.loss;
    m.validation_accuracy = eval.accuracy;
  }
  double total = 0, correct = 0;
  int64_t targets = 0;
  for (const auto& [name, data] : setup.source_valid) {
    const EvalStats eval = Evaluate(model, data, data_spec, loss, pad_id);
    m.source_validation_loss[name] = eval.loss;
    total += eval.loss * eval.targets;
    correct += eval.accuracy * eval.targets;
    targets += eval.targets;
  }
  if (!setup.valid.has_value() && targets > 0) {
    m.validation_loss = total / targets;
    m.validation_accuracy = correct / targets;
  }
}

// One optimizer step over `batches` (its micro-batches): forward, loss,
// backward for each, the loss normalised by the step's target tokens; then
// clip and update. Fills the loss, accuracy and gradient norm of `m`, and
// raises loss_peak_bytes to the largest logits block the loss held.
// OUT_OF_RANGE ("nan_loss: …", naming the step) when the loss is not finite;
// the weights are then left as they were before the step.
absl::Status OptimizerStep(const LlamaModel& model, AdamW& optimizer,
                           const std::vector<Batch>& batches,
                           const LossPath& loss,
                           const OptimizerSpec& optimizer_spec, StepMetrics& m,
                           int64_t& loss_peak_bytes) {
  int64_t step_targets = 0;
  for (const Batch& batch : batches) step_targets += Targets(batch);
  optimizer.ZeroGrad();
  double loss_sum = 0;
  int64_t correct = 0;
  for (const Batch& batch : batches) {
    if (Targets(batch) == 0) continue;
    LossStats stats = loss(model, batch, /*training=*/true);
    loss_peak_bytes = std::max(loss_peak_bytes, stats.peak_logits_bytes);
    const double share = static_cast<double>(stats.targets) / step_targets;
    (stats.loss * share).backward();
    loss_sum += stats.loss.item<double>() * stats.targets;
    correct += stats.correct;
  }
  m.loss = loss_sum / std::max<int64_t>(step_targets, 1);
  m.token_accuracy =
      static_cast<double>(correct) / std::max<int64_t>(step_targets, 1);
  if (!std::isfinite(m.loss)) {
    // Retrying would diverge the same way: stop and say what to change.
    return WithErrorKind(absl::OutOfRangeError(absl::StrCat(
        "nan_loss: the training loss became ", m.loss, " at step ", m.step,
        "; lower the learning rate (learning_rate_multiplier) or check the "
        "data")),
        ErrorKind::kUserOptions, "method.supervised.hyperparameters.learning_rate_multiplier");
  }
  m.grad_norm =
      torch::nn::utils::clip_grad_norm_(optimizer.tensors(),
                                        optimizer_spec.max_grad_norm);
  optimizer.Step(m.learning_rate);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrainResult> RunSft(const RunSpec& spec, const SftSpec& sft,
                                   const TrainHooks& hooks) {
  ASSIGN_OR_RETURN(const LrSchedule schedule,
                   Kind(ParseLrSchedule(spec.schedule.lr_scheduler),
                        ErrorKind::kUserOptions,
                        "method.supervised.hyperparameters.lr_scheduler"));

  // Setup: model, tokenizer, data, adapter, optimizer.
  ASSIGN_OR_RETURN(Setup setup, SetUp(spec));
  // A mixture's sources are fingerprinted by content, each.
  Json resume_keys = ResumeKeys(spec);
  const std::vector<MixtureSourceSpec>& sources = spec.data.mixture.sources;
  for (size_t i = 1; i < sources.size(); ++i) {
    ASSIGN_OR_RETURN(
        resume_keys[absl::StrCat("mixture.sources[", i, "].fnv1a64")],
        FileFingerprint(sources[i].file));
  }
  ASSIGN_OR_RETURN(
      const Json fingerprint,
      RunFingerprint(std::move(resume_keys), spec.model.dir,
                     sources.empty() ? spec.data.training_file
                                     : sources[0].file));
  const LlamaModel& model = *setup.model;
  const std::vector<Example>& examples = setup.train.examples;
  const int32_t pad_id = setup.tokenizer->pad_id();
  const DataSpec& data_spec = spec.data;
  const OptimizerSpec& optimizer_spec = spec.optimizer;
  const LossPath loss{sft, spec.device};

  const std::vector<AdamW::Param> params =
      TrainableParams(model, spec.adapter);
  AdamW optimizer(params,
                  AdamWOptions{.weight_decay = optimizer_spec.weight_decay});
  const int64_t examples_per_step =
      static_cast<int64_t>(data_spec.batch_size) *
      optimizer_spec.gradient_accumulation_steps;
  const MixturePlan* mixture =
      setup.mixture.has_value() ? &*setup.mixture : nullptr;
  const auto epoch_size = static_cast<int64_t>(
      mixture != nullptr ? mixture->EpochSize() : examples.size());
  const int64_t steps_per_epoch =
      (epoch_size + examples_per_step - 1) / examples_per_step;
  const int64_t total_steps = steps_per_epoch * spec.schedule.n_epochs;

  // Or resume.
  Progress progress;
  DataCursor data = DataCursor::Start(examples.size(), spec.seed, mixture);
  const MaskedThoughtSpec& masked_thought = sft.masked_thought;
  const std::string& resume_from = spec.checkpoint.resume_from;
  if (!resume_from.empty()) {
    RETURN_IF_ERROR(ResumeRunCheckpoint(
        resume_from, TrainedWeightsFile(spec.adapter), params, optimizer,
        progress, data, total_steps, fingerprint, model.device()));
  }
  const LoraSpec* lora = Lora(spec.adapter);
  spdlog::info(
      "training {} on {} ({} on {}, {} examples, {} steps from step {}, lr "
      "{} {}, batch {} x {}, max_seq_len {}, seed {}, packing {}, "
      "activation checkpointing {}, loss chunks of {} tokens{}{})",
      lora != nullptr ? absl::StrCat("LoRA r=", lora->rank) : "all weights",
      spec.model.dir, c10::toString(model.compute_dtype()),
      model.device().str(), examples.size(), total_steps, progress.step,
      optimizer_spec.learning_rate, spec.schedule.lr_scheduler,
      data_spec.batch_size, optimizer_spec.gradient_accumulation_steps,
      data_spec.max_seq_len, spec.seed, data_spec.packing,
      spec.device.activation_checkpointing, sft.loss_chunk_tokens,
      sources.empty()
          ? ""
          : absl::StrCat(", a ", spec.data.mixture.strategy, " mixture of ",
                         sources.size(), " sources, ", epoch_size,
                         " examples an epoch"),
      masked_thought.mask_rate > 0
          ? absl::StrCat(", masked thought p=", masked_thought.mask_rate, " ",
                         masked_thought.schedule, " mask id ", setup.mask_id)
          : "");

  TrainResult result;
  result.truncated_examples = setup.train.truncated;
  StepMetrics m;
  m.step = progress.step;
  m.total_steps = total_steps;
  // The step whose checkpoint exists: the one resumed from, then the ones
  // this run writes. A stop right after a resume does not write (and
  // upload) the same step again.
  int64_t checkpointed_step = resume_from.empty() ? -1 : progress.step;
  auto checkpoint = [&]() -> absl::Status {
    auto save_weights = [&](const std::string& dir) {
      // float32 whatever the source dtype, so that resuming is exact.
      return SaveTrained(model, spec.adapter, spec.model, dir,
                         torch::kFloat32);
    };
    ASSIGN_OR_RETURN(SavedCheckpoint saved,
                     SaveRunCheckpoint(spec.checkpoint, save_weights,
                                       optimizer, progress, data, total_steps,
                                       fingerprint, model.device()));
    CheckpointInfo info{.step = progress.step,
                        .dir = saved.dir,
                        .files = saved.files,
                        .metrics = m,
                        .validation_loss = m.validation_loss};
    checkpointed_step = progress.step;
    if (hooks.on_checkpoint) hooks.on_checkpoint(info);
    return absl::OkStatus();
  };
  const int eval_every = spec.evaluation.every_steps;
  const int checkpoint_every = spec.checkpoint.every_steps;

  // Steps.
  while (progress.step < total_steps) {
    const StopRequest stop =
        hooks.should_stop ? hooks.should_stop() : StopRequest::kNone;
    if (stop == StopRequest::kCancel) {
      return absl::CancelledError(
          absl::StrCat("cancelled at step ", progress.step));
    }
    if (stop == StopRequest::kCheckpointAndStop) {
      if (checkpointed_step != progress.step) RETURN_IF_ERROR(checkpoint());
      return absl::AbortedError(absl::StrCat("stopped at step ", progress.step,
                                             " after checkpointing"));
    }

    const auto start = std::chrono::steady_clock::now();
    m = StepMetrics{.step = progress.step + 1, .total_steps = total_steps};
    m.learning_rate = LearningRateAt(schedule, progress.step, total_steps,
                                     spec.schedule.warmup_steps,
                                     optimizer_spec.learning_rate);
    std::vector<Batch> batches;
    int64_t tokens = 0;
    const double mask_rate =
        MaskRateAt(masked_thought, progress.step, total_steps);
    for (const std::vector<size_t>& indices :
         data.TakeStep(data_spec.batch_size,
                       optimizer_spec.gradient_accumulation_steps)) {
      Batch batch = MakeInput(examples, indices, data_spec, pad_id);
      if (masked_thought.mask_rate > 0) {
        MaskTargets(&batch, mask_rate, setup.mask_id, spec.seed, progress.step,
                    static_cast<int64_t>(batches.size()));
      }
      batches.push_back(ToDevice(std::move(batch), model.device()));
      tokens += batches.back().tokens;
      result.padding_tokens += batches.back().padding;
    }
    RETURN_IF_ERROR(OptimizerStep(model, optimizer, batches, loss,
                                  optimizer_spec, m, result.loss_peak_bytes));
    const std::chrono::duration<double> seconds =
        std::chrono::steady_clock::now() - start;
    m.tokens_per_second = tokens / std::max(seconds.count(), 1e-9);

    progress.step = m.step;
    progress.trained_tokens += tokens;
    if (m.step == 1) progress.first_loss = m.loss;
    progress.last_loss = m.loss;
    m.trained_tokens = progress.trained_tokens;
    const bool validates =
        setup.valid.has_value() || !setup.source_valid.empty();
    if (validates && ((eval_every > 0 && m.step % eval_every == 0) ||
                      m.step == total_steps)) {
      RunValidation(model, setup, data_spec, loss, pad_id, m);
    }
    if (hooks.on_step) hooks.on_step(m);
    if (checkpoint_every > 0 && m.step % checkpoint_every == 0) {
      RETURN_IF_ERROR(checkpoint());
    }
  }

  // Export.
  result.steps = progress.step;
  result.trained_tokens = progress.trained_tokens;
  result.first_loss = progress.first_loss;
  result.last_loss = progress.last_loss;
  if (setup.valid.has_value() || !setup.source_valid.empty()) {
    if (!m.validation_loss.has_value()) {
      RunValidation(model, setup, data_spec, loss, pad_id, m);
    }
    result.validation_loss = m.validation_loss;
    result.source_validation_loss = m.source_validation_loss;
  }
  RETURN_IF_ERROR(ExportResult(model, spec.adapter, spec.model, spec.output));
  return result;
}

}  // namespace lathe::engine
