#include "worker/engine/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/adamw.h"
#include "worker/engine/batch.h"
#include "worker/engine/chat_data.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/llama.h"
#include "worker/engine/lora.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/loss/chunked_cross_entropy.h"
#include "worker/engine/model_export.h"
#include "worker/engine/schedule.h"
#include "worker/engine/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// Marks a failure of `step` as `kind` (see error_kind.h).
template <typename T>
absl::StatusOr<T> Kind(absl::StatusOr<T> result, ErrorKind kind, absl::string_view field = "") {
  if (result.ok()) return result;
  return WithErrorKind(result.status(), kind, field);
}
absl::Status Kind(absl::Status status, ErrorKind kind, absl::string_view field = "") {
  return status.ok() ? status : WithErrorKind(status, kind, field);
}

// adapter_config.json's base_model_name_or_path (see TrainOptions).
std::string AdapterBaseName(const TrainOptions& o, const LlamaModel& model) {
  if (!model.config().hub_name.empty()) return model.config().hub_name;
  return o.base_model_name.empty() ? o.model_dir : o.base_model_name;
}

absl::Status ValidateOptions(const TrainOptions& o) {
  auto invalid = [](const std::string& field, const std::string& rule) {
    return absl::InvalidArgumentError(
        absl::StrCat("field \"", field, "\" ", rule));
  };
  if (o.model_dir.empty()) return invalid("model_dir", "is required");
  if (o.training_file.empty()) return invalid("training_file", "is required");
  if (o.output_dir.empty()) return invalid("output_dir", "is required");
  if (o.method != "lora" && o.method != "full") {
    return invalid("method", "must be \"lora\" or \"full\"");
  }
  if (o.method == "full" && !o.merge_output_dir.empty()) {
    return invalid("merge_output_dir", "is for LoRA runs only");
  }
  if (o.n_epochs <= 0) return invalid("n_epochs", "must be positive");
  if (o.batch_size <= 0) return invalid("batch_size", "must be positive");
  if (o.gradient_accumulation_steps <= 0) {
    return invalid("gradient_accumulation_steps", "must be positive");
  }
  if (!(o.learning_rate > 0))
    return invalid("learning_rate", "must be positive");
  if (o.warmup_steps < 0) return invalid("warmup_steps", "must be >= 0");
  RETURN_IF_ERROR(ParseLrSchedule(o.lr_scheduler).status());
  if (!(o.weight_decay >= 0)) return invalid("weight_decay", "must be >= 0");
  if (!(o.max_grad_norm > 0))
    return invalid("max_grad_norm", "must be positive");
  if (o.max_seq_len < 2) return invalid("max_seq_len", "must be at least 2");
  if (o.eval_every < 0) return invalid("eval_every", "must be >= 0");
  if (o.checkpoint_every < 0) {
    return invalid("checkpoint_every", "must be >= 0");
  }
  if (o.loss_chunk_tokens <= 0) {
    return invalid("loss_chunk_tokens", "must be positive");
  }
  if (o.checkpoint_every > 0 && o.checkpoint_dir.empty()) {
    return invalid("checkpoint_dir", "is required with checkpoint_every");
  }
  return o.method == "lora" ? ValidateLoraOptions(o.lora) : absl::OkStatus();
}

// FNV-1a (64-bit) of the bytes of `path`, as 16 hex digits: a content
// fingerprint (not a security hash). NOT_FOUND when it cannot be read.
absl::StatusOr<std::string> FileFingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  uint64_t hash = 14695981039346656037ull;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      hash = (hash ^ static_cast<unsigned char>(buffer[i])) * 1099511628211ull;
    }
  }
  return absl::StrCat(absl::Hex(hash, absl::kZeroPad16));
}

// The options a checkpoint must have been written with to be resumed:
// those that decide the data order, the step count and the trainable
// tensors. (Learning rate, schedule, weight decay, clipping, eval and
// output options may change on resume, and so may packing, loss chunking and
// activation checkpointing: they change how a step is computed, not its
// examples; dropout masks then differ, as their shape does.)
absl::StatusOr<Json> Fingerprint(const TrainOptions& o) {
  ASSIGN_OR_RETURN(std::string config_hash,
                   FileFingerprint(o.model_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::string data_hash, FileFingerprint(o.training_file));
  Json f = {
      {"method", o.method},
      {"model_config_fnv1a64", config_hash},
      {"training_file_fnv1a64", data_hash},
      {"n_epochs", o.n_epochs},
      {"batch_size", o.batch_size},
      {"gradient_accumulation_steps", o.gradient_accumulation_steps},
      {"max_seq_len", o.max_seq_len},
      {"seed", o.seed},
      {"chat_template", o.chat_template},
  };
  if (o.method == "lora") {
    f["lora.rank"] = o.lora.rank;
    f["lora.alpha"] = o.lora.alpha;
    f["lora.dropout"] = o.lora.dropout;
    f["lora.use_rslora"] = o.lora.use_rslora;
    f["lora.target_modules"] = o.lora.target_modules;
  }
  return f;
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
  // The base model's files are the operator's: a broken one is never
  // blamed on the user's data.
  ASSIGN_OR_RETURN(setup.model, Kind(LlamaModel::Load(o.model_dir), ErrorKind::kModel));
  ASSIGN_OR_RETURN(setup.tokenizer, Kind(Tokenizer::Load(o.model_dir), ErrorKind::kModel));
  if (setup.tokenizer->vocab_size() > setup.model->config().vocab_size) {
    return WithErrorKind(absl::InvalidArgumentError(absl::StrCat(
                             o.model_dir, ": the tokenizer has ",
                             setup.tokenizer->vocab_size(),
                             " tokens but config.json's vocab_size is ",
                             setup.model->config().vocab_size)),
                         ErrorKind::kModel);
  }
  // An unknown template is an error only if the data holds chat lines.
  const absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplateFor(*setup.tokenizer, o.chat_template);
  absl::StatusOr<Dataset> train =
      LoadChatDataset(o.training_file, *setup.tokenizer, chat_template,
                      o.max_seq_len, o.training_file_name);
  if (!train.ok()) {
    return WithErrorKind(train.status(), ErrorKind::kUserData, "training_file");
  }
  setup.train = *std::move(train);
  if (!o.validation_file.empty()) {
    absl::StatusOr<Dataset> valid =
        LoadChatDataset(o.validation_file, *setup.tokenizer, chat_template,
                        o.max_seq_len, o.validation_file_name);
    if (!valid.ok()) {
      return WithErrorKind(valid.status(), ErrorKind::kUserData, "validation_file");
    }
    setup.valid = *std::move(valid);
  }
  torch::manual_seed(o.seed);
  if (o.method == "lora") {
    RETURN_IF_ERROR(AttachLora(*setup.model, o.lora));
  } else {
    for (auto& [name, weight] : setup.model->Weights(/*merge_lora=*/false)) {
      weight.requires_grad_(true);
    }
  }
  return setup;
}

// The trained tensors, named as in the run's weight files. Weight decay
// applies to LoRA's A and B, and to full fine-tuning's matrices (not to
// norms and biases, as transformers' Trainer does).
std::vector<AdamW::Param> TrainableParams(const LlamaModel& model,
                                          const TrainOptions& o) {
  std::vector<AdamW::Param> params;
  const TensorMap named = o.method == "lora"
                              ? LoraParameters(model)
                              : model.Weights(/*merge_lora=*/false);
  for (const auto& [name, tensor] : named) {
    params.push_back({name, tensor, tensor.dim() >= 2});
  }
  return params;
}

// Where the run stands in its data: this epoch's shuffled order of the
// examples and the next one to read.
struct DataCursor {
  std::mt19937_64 rng;
  std::vector<size_t> order;
  int epoch = 0;
  size_t next = 0;

  void Shuffle() {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    next = 0;
  }

  // The examples of the next optimizer step: up to `micro_batches` batches
  // of `batch_size`, never crossing the end of the epoch.
  std::vector<std::vector<size_t>> TakeStep(int batch_size, int micro_batches) {
    std::vector<std::vector<size_t>> batches;
    for (int i = 0; i < micro_batches && next < order.size(); ++i) {
      const size_t end = std::min(order.size(), next + batch_size);
      batches.emplace_back(order.begin() + next, order.begin() + end);
      next = end;
    }
    if (next == order.size()) {
      ++epoch;
      Shuffle();
    }
    return batches;
  }
};

// Counters a checkpoint carries besides the optimizer and data state.
struct Progress {
  int64_t step = 0;
  int64_t trained_tokens = 0;
  double first_loss = 0;
  double last_loss = 0;
};

// examples[indices] as the model's input: packed or padded.
Batch MakeInput(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, const TrainOptions& o,
                int32_t pad_id) {
  return o.packing ? PackBatch(examples, indices)
                   : MakeBatch(examples, indices, pad_id);
}

// The batch's loss through the final hidden states and the chunked head.
LossStats BatchLoss(const LlamaModel& model, const Batch& batch,
                    const TrainOptions& o, bool training) {
  const torch::Tensor hidden = model.Hidden(
      batch.input_ids, batch.layout,
      {.training = training,
       .checkpoint_layers = training && o.activation_checkpointing});
  return ChunkedCausalLmLoss(hidden, model.head(), batch, o.loss_chunk_tokens);
}

struct EvalStats {
  double loss = 0;      // mean over target tokens
  double accuracy = 0;  // argmax == label over target tokens
};

// Loss and accuracy over all target tokens of `data`, without gradients or
// dropout.
EvalStats Evaluate(const LlamaModel& model, const Dataset& data,
                   const TrainOptions& o, int32_t pad_id) {
  torch::NoGradGuard no_grad;
  double total = 0;
  int64_t targets = 0, correct = 0;
  const size_t batch_size = o.batch_size;
  for (size_t first = 0; first < data.examples.size(); first += batch_size) {
    std::vector<size_t> indices(
        std::min<size_t>(batch_size, data.examples.size() - first));
    std::iota(indices.begin(), indices.end(), first);
    Batch batch = MakeInput(data.examples, indices, o, pad_id);
    if (Targets(batch) == 0) continue;
    LossStats stats = BatchLoss(model, batch, o, /*training=*/false);
    total += stats.loss.item<double>() * stats.targets;
    targets += stats.targets;
    correct += stats.correct;
  }
  return {total / std::max<int64_t>(targets, 1),
          static_cast<double>(correct) / std::max<int64_t>(targets, 1)};
}

// One optimizer step over `batches` (its micro-batches): forward, loss,
// backward for each, the loss normalised by the step's target tokens; then
// clip and update. Fills the loss, accuracy and gradient norm of `m`, and
// raises loss_peak_bytes to the largest logits block the loss held.
// OUT_OF_RANGE ("nan_loss: …", naming the step) when the loss is not finite;
// the weights are then left as they were before the step.
absl::Status OptimizerStep(const LlamaModel& model, AdamW& optimizer,
                           const std::vector<Batch>& batches,
                           const TrainOptions& o, StepMetrics& m,
                           int64_t& loss_peak_bytes) {
  int64_t step_targets = 0;
  for (const Batch& batch : batches) step_targets += Targets(batch);
  optimizer.ZeroGrad();
  double loss_sum = 0;
  int64_t correct = 0;
  for (const Batch& batch : batches) {
    if (Targets(batch) == 0) continue;
    LossStats stats = BatchLoss(model, batch, o, /*training=*/true);
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
      torch::nn::utils::clip_grad_norm_(optimizer.tensors(), o.max_grad_norm);
  optimizer.Step(m.learning_rate);
  return absl::OkStatus();
}

at::Generator TorchGenerator() {
  return at::globalContext().defaultGenerator(torch::kCPU);
}

// Writes <checkpoint_dir>/step-<N> atomically.
absl::StatusOr<CheckpointInfo> SaveCheckpoint(
    const TrainOptions& o, const LlamaModel& model, const AdamW& optimizer,
    const Progress& progress, const DataCursor& data, int64_t total_steps,
    const Json& fingerprint) {
  if (o.checkpoint_dir.empty()) {
    return absl::FailedPreconditionError(
        "a checkpoint was requested but the run has no checkpoint_dir");
  }
  CheckpointInfo info;
  info.step = progress.step;
  info.dir = absl::StrCat(o.checkpoint_dir, "/step-", progress.step);
  const std::string temp = info.dir + ".tmp";
  std::error_code error;
  std::filesystem::remove_all(temp, error);
  std::filesystem::create_directories(temp, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", temp, ": ", error.message()));
  }
  if (o.method == "lora") {
    RETURN_IF_ERROR(
        SaveAdapter(model, o.lora, AdapterBaseName(o, model), temp));
  } else {
    // float32 whatever the source dtype, so that resuming is exact.
    RETURN_IF_ERROR(SaveModelFolder(model, o.model_dir, temp, torch::kFloat32));
  }
  TrainerState state;
  state.step = progress.step;
  state.total_steps = total_steps;
  state.epoch = data.epoch;
  state.cursor = static_cast<int64_t>(data.next);
  state.trained_tokens = progress.trained_tokens;
  state.first_loss = progress.first_loss;
  state.last_loss = progress.last_loss;
  std::ostringstream rng;
  rng << data.rng;
  state.data_rng = rng.str();
  state.data_order.assign(data.order.begin(), data.order.end());
  {
    at::Generator generator = TorchGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    state.torch_rng = generator.get_state();
  }
  state.optimizer_steps = optimizer.steps();
  state.optimizer = optimizer.State();
  state.fingerprint = fingerprint;
  RETURN_IF_ERROR(WriteTrainerState(temp, state));
  ASSIGN_OR_RETURN(info.files, CommitDirectory(temp, info.dir));
  spdlog::info("checkpoint at step {} written to {}", info.step, info.dir);
  return info;
}

// Restores the model's trained tensors, the optimizer, the counters, the
// data cursor and torch's generator from the checkpoint o.resume_from.
absl::Status Resume(const TrainOptions& o, const LlamaModel& model,
                    AdamW& optimizer, Progress& progress, DataCursor& data,
                    int64_t total_steps, const Json& fingerprint) {
  const std::string& dir = o.resume_from;
  ASSIGN_OR_RETURN(TrainerState state, ReadTrainerState(dir));
  RETURN_IF_ERROR(CheckFingerprint(state.fingerprint, fingerprint));
  const std::string state_path = dir + "/" + kTrainerStateJson;
  if (state.total_steps != total_steps || state.step < 0 ||
      state.step > total_steps || state.epoch < 0 ||
      state.data_order.size() != data.order.size() || state.cursor < 0 ||
      state.cursor > static_cast<int64_t>(state.data_order.size())) {
    return absl::DataLossError(
        absl::StrCat(state_path,
                     ": its step, epoch or data position does not fit this "
                     "run's data"));
  }
  for (int64_t index : state.data_order) {
    if (index < 0 || index >= static_cast<int64_t>(data.order.size())) {
      return absl::DataLossError(
          absl::StrCat(state_path, ": data order holds index ", index));
    }
  }
  std::istringstream rng(state.data_rng);
  rng >> data.rng;
  if (rng.fail()) {
    return absl::DataLossError(
        absl::StrCat(state_path, ": field \"data_rng\" is malformed"));
  }

  const std::string weights_path =
      dir + (o.method == "lora" ? "/adapter_model.safetensors"
                                : "/model.safetensors");
  ASSIGN_OR_RETURN(TensorMap saved, LoadSafetensors(weights_path));
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const AdamW::Param& p : TrainableParams(model, o)) {
    ASSIGN_OR_RETURN(
        torch::Tensor value,
        TakeTensor(saved, p.name, p.value.sizes().vec(), weights_path));
    copies.push_back({p.value, std::move(value)});
  }
  {
    at::Generator generator = TorchGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    if (!state.torch_rng.sizes().equals(generator.get_state().sizes())) {
      return absl::DataLossError(
          absl::StrCat(dir, "/", kTrainerStateTensors,
                       ": \"rng/torch\" has the wrong size"));
    }
    generator.set_state(state.torch_rng);
  }
  absl::Status restored =
      optimizer.Restore(state.optimizer_steps, state.optimizer);
  if (!restored.ok()) {
    return absl::DataLossError(
        absl::StrCat(dir, "/", kTrainerStateTensors, ": ", restored.message()));
  }
  torch::NoGradGuard no_grad;
  for (auto& [param, value] : copies) param.copy_(value);
  progress = {state.step, state.trained_tokens, state.first_loss,
              state.last_loss};
  data.epoch = state.epoch;
  data.next = static_cast<size_t>(state.cursor);
  data.order.assign(state.data_order.begin(), state.data_order.end());
  spdlog::info("resumed from {} at step {} (epoch {}, example {})", dir,
               state.step, state.epoch, state.cursor);
  return absl::OkStatus();
}

absl::Status Export(const TrainOptions& o, const LlamaModel& model) {
  ASSIGN_OR_RETURN(torch::ScalarType dtype, ModelWeightsDtype(o.model_dir));
  if (o.method == "full") {
    return SaveModelFolder(model, o.model_dir, o.output_dir, dtype);
  }
  RETURN_IF_ERROR(
      SaveAdapter(model, o.lora, AdapterBaseName(o, model), o.output_dir));
  if (o.merge_output_dir.empty()) return absl::OkStatus();
  return SaveModelFolder(model, o.model_dir, o.merge_output_dir, dtype);
}

absl::StatusOr<TrainResult> RunTraining(const TrainOptions& o,
                                        const TrainHooks& hooks) {
  RETURN_IF_ERROR(Kind(ValidateOptions(o), ErrorKind::kUserOptions));
  ASSIGN_OR_RETURN(const LrSchedule schedule,
                   Kind(ParseLrSchedule(o.lr_scheduler), ErrorKind::kUserOptions,
                        "method.supervised.hyperparameters.lr_scheduler"));
  ASSIGN_OR_RETURN(Setup setup, SetUp(o));
  ASSIGN_OR_RETURN(const Json fingerprint, Fingerprint(o));
  const LlamaModel& model = *setup.model;
  const std::vector<Example>& examples = setup.train.examples;
  const int32_t pad_id = setup.tokenizer->pad_id();

  AdamW optimizer(TrainableParams(model, o),
                  AdamWOptions{.weight_decay = o.weight_decay});
  const int64_t examples_per_step =
      static_cast<int64_t>(o.batch_size) * o.gradient_accumulation_steps;
  const int64_t steps_per_epoch =
      (static_cast<int64_t>(examples.size()) + examples_per_step - 1) /
      examples_per_step;
  const int64_t total_steps = steps_per_epoch * o.n_epochs;

  Progress progress;
  DataCursor data{.rng = std::mt19937_64(o.seed),
                  .order = std::vector<size_t>(examples.size())};
  data.Shuffle();
  if (!o.resume_from.empty()) {
    RETURN_IF_ERROR(
        Resume(o, model, optimizer, progress, data, total_steps, fingerprint));
  }
  spdlog::info(
      "training {} on {} ({} examples, {} steps from step {}, lr {} {}, "
      "batch {} x {}, max_seq_len {}, seed {}, packing {}, activation "
      "checkpointing {}, loss chunks of {} tokens)",
      o.method == "lora" ? absl::StrCat("LoRA r=", o.lora.rank) : "all weights",
      o.model_dir, examples.size(), total_steps, progress.step, o.learning_rate,
      o.lr_scheduler, o.batch_size, o.gradient_accumulation_steps,
      o.max_seq_len, o.seed, o.packing, o.activation_checkpointing,
      o.loss_chunk_tokens);

  TrainResult result;
  result.truncated_examples = setup.train.truncated;
  StepMetrics m;
  m.step = progress.step;
  m.total_steps = total_steps;
  // The step whose checkpoint exists: the one resumed from, then the ones
  // this run writes. A stop right after a resume does not write (and
  // upload) the same step again.
  int64_t checkpointed_step = o.resume_from.empty() ? -1 : progress.step;
  auto checkpoint = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(CheckpointInfo info,
                     SaveCheckpoint(o, model, optimizer, progress, data,
                                    total_steps, fingerprint));
    info.metrics = m;
    info.validation_loss = m.validation_loss;
    checkpointed_step = progress.step;
    if (hooks.on_checkpoint) hooks.on_checkpoint(info);
    return absl::OkStatus();
  };

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
                                     o.warmup_steps, o.learning_rate);
    std::vector<Batch> batches;
    int64_t tokens = 0;
    for (const std::vector<size_t>& indices :
         data.TakeStep(o.batch_size, o.gradient_accumulation_steps)) {
      batches.push_back(MakeInput(examples, indices, o, pad_id));
      tokens += batches.back().tokens;
      result.padding_tokens += batches.back().padding;
    }
    RETURN_IF_ERROR(
        OptimizerStep(model, optimizer, batches, o, m, result.loss_peak_bytes));
    const std::chrono::duration<double> seconds =
        std::chrono::steady_clock::now() - start;
    m.tokens_per_second = tokens / std::max(seconds.count(), 1e-9);

    progress.step = m.step;
    progress.trained_tokens += tokens;
    if (m.step == 1) progress.first_loss = m.loss;
    progress.last_loss = m.loss;
    m.trained_tokens = progress.trained_tokens;
    if (setup.valid.has_value() &&
        ((o.eval_every > 0 && m.step % o.eval_every == 0) ||
         m.step == total_steps)) {
      const EvalStats eval = Evaluate(model, *setup.valid, o, pad_id);
      m.validation_loss = eval.loss;
      m.validation_accuracy = eval.accuracy;
    }
    if (hooks.on_step) hooks.on_step(m);
    if (o.checkpoint_every > 0 && m.step % o.checkpoint_every == 0) {
      RETURN_IF_ERROR(checkpoint());
    }
  }

  result.steps = progress.step;
  result.trained_tokens = progress.trained_tokens;
  result.first_loss = progress.first_loss;
  result.last_loss = progress.last_loss;
  if (setup.valid.has_value()) {
    result.validation_loss =
        m.validation_loss.has_value()
            ? *m.validation_loss
            : Evaluate(model, *setup.valid, o, pad_id).loss;
  }
  RETURN_IF_ERROR(Export(o, model));
  return result;
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainOptions& options,
                                  const TrainHooks& hooks) {
  try {
    return RunTraining(options, hooks);
  } catch (const c10::OutOfMemoryError& e) {
    return WithErrorKind(
        absl::ResourceExhaustedError(absl::StrCat(
            "out_of_memory: the device ran out of memory (", options.batch_size,
            " examples of up to ", options.max_seq_len,
            " tokens per micro-batch); use a smaller batch_size or max_seq_len, "
            "or gradient accumulation")),
        ErrorKind::kUserOptions, "method.supervised.hyperparameters.batch_size");
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("LibTorch error: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what()));
  }
}


}  // namespace lathe::engine
