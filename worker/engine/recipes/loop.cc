#include "worker/engine/recipes/loop.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/adapters/selection.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/checkpoint/run_checkpoint.h"
#include "worker/engine/data/cursor.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/distributed/data_parallel.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/model/shared_base.h"
#include "worker/engine/optim/adamw.h"
#include "worker/engine/optim/schedule.h"
#include "worker/engine/adapters/prompt_tuning.h"
#include "worker/engine/reports/reports.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

using Json = nlohmann::json;

namespace {
// In a checkpoint: the forgetting report's "before" ({"loss", "tokens"}).
constexpr char kGeneralBeforeFile[] = "general_before.json";
}  // namespace

absl::StatusOr<ModelSetup> SetUpModel(const RunSpec& spec) {
  const ModelSpec& m = spec.model;
  ModelSetup setup;
  ASSIGN_OR_RETURN(const Placement placement, ResolvePlacement(spec.device));
  // The base model's files are the operator's: a broken one is never
  // blamed on the user's data.
  // Mixed precision: a frozen base is held in the compute dtype; what is
  // trained stays float32 (masters, and AdamW's moments with them).
  const torch::ScalarType storage =
      std::holds_alternative<FullSpec>(spec.adapter) ? torch::kFloat32
                                                     : placement.compute;
  // LoRA and prompt tuning never write the base: runs of this process over
  // the same base share one frozen copy of it.
  const bool shared = Lora(spec.adapter) != nullptr ||
                      std::holds_alternative<PromptTuningSpec>(spec.adapter);
  if (shared) {
    ASSIGN_OR_RETURN(setup.base,
                     WithErrorKind(AcquireSharedBase(m.dir, placement.device, storage),
                                   ErrorKind::kModel));
    ASSIGN_OR_RETURN(setup.model,
                     WithErrorKind(LlamaModel::FromTensors(setup.base->config,
                                                           setup.base->weights, m.dir),
                                   ErrorKind::kModel));
  } else {
    ASSIGN_OR_RETURN(setup.model, WithErrorKind(LlamaModel::Load(m.dir),
                                                ErrorKind::kModel));
  }
  ASSIGN_OR_RETURN(setup.tokenizer, WithErrorKind(Tokenizer::Load(m.dir),
                                                  ErrorKind::kModel));
  if (setup.tokenizer->vocab_size() > setup.model->config().vocab_size) {
    return WithErrorKind(absl::InvalidArgumentError(absl::StrCat(
                             m.dir, ": the tokenizer has ",
                             setup.tokenizer->vocab_size(),
                             " tokens but config.json's vocab_size is ",
                             setup.model->config().vocab_size)),
                         ErrorKind::kModel);
  }
  setup.chat_template = ChatTemplateFor(*setup.tokenizer, m.chat_template);
  setup.model->Place(placement.device, storage, placement.compute);
  // The adapter's initialization draws from torch's default generators,
  // seeded with the run's seed; the run's dropout then draws from a
  // generator of its own, continuing the same stream. Runs setting up at
  // once in one process take turns, so each draws what it would alone.
  static absl::Mutex seeding;
  absl::MutexLock lock(&seeding);
  torch::manual_seed(spec.seed);
  RETURN_IF_ERROR(
      MakeTrainable(*setup.model, spec.adapter, setup.tokenizer.get(), spec.seed));
  setup.model->SetGenerator(
      at::globalContext().defaultGenerator(placement.device).clone());
  return setup;
}

void ReseedGenerator(const LlamaModel& model, uint64_t seed) {
  at::Generator generator = model.generator();
  if (!generator.defined()) {
    torch::manual_seed(seed);
    return;
  }
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_current_seed(seed);
}

HeldOutLoss GeneralLossBefore(const LlamaModel& model, const GeneralSet& general,
                              const RunSpec& spec) {
  const HeldOutLoss before =
      HeldOutLossOf(model, general.examples, spec.evaluation.general_tokens == "all",
                    spec.data.batch_size, general.pad_id, /*adapters=*/false);
  spdlog::info("general_file: the base model's loss {} over {} tokens", before.loss,
               before.tokens);
  return before;
}

ForgettingReport ForgettingAfter(const LlamaModel& model, const GeneralSet& general,
                                 const RunSpec& spec, const HeldOutLoss& before) {
  std::vector<Example> examples = general.examples;
  if (const int n = model.num_virtual_tokens(); n > 0) PrependVirtualTokens(examples, n);
  const HeldOutLoss after =
      HeldOutLossOf(model, examples, spec.evaluation.general_tokens == "all",
                    spec.data.batch_size, general.pad_id);
  const ForgettingReport report{.loss_before = before.loss,
                                .loss_after = after.loss,
                                .tokens = after.tokens,
                                .tokens_counted = spec.evaluation.general_tokens};
  spdlog::info("general_file: loss {} before, {} after (delta {})", report.loss_before,
               report.loss_after, report.delta());
  return report;
}

absl::StatusOr<std::optional<GeneralSet>> LoadGeneralSet(
    const RunSpec& spec, const ModelSetup& setup) {
  const EvaluationSpec& e = spec.evaluation;
  if (e.general_file.empty()) return std::nullopt;
  absl::StatusOr<Dataset> data = LoadChatDataset(
      e.general_file, *setup.tokenizer, setup.chat_template,
      spec.data.max_seq_len, e.general_file_name);
  if (!data.ok()) {
    return WithErrorKind(data.status(), ErrorKind::kUserData, "general_file");
  }
  return GeneralSet{.examples = std::move(data->examples),
                    .pad_id = setup.tokenizer->pad_id()};
}

namespace {

// Fills `m` from a validation pass.
void Record(const EvalWork& eval, StepMetrics& m) {
  m.validation_loss = eval.loss;
  m.validation_accuracy = eval.token_accuracy;
  for (const auto& [name, value] : eval.values) {
    m.values[absl::StrCat("valid_", name)] = value;
  }
}

// The parameters of `all` that `selection` trains now.
std::vector<AdamW::Param> Selected(const std::vector<AdamW::Param>& all,
                                   const TrainableSelection& selection) {
  std::vector<AdamW::Param> params;
  for (const AdamW::Param& p : all) {
    if (selection.trained().count(p.name)) params.push_back(p);
  }
  return params;
}

// The spec's trainable selection of `model`, or null when it selects none.
// Errors are the user's options, naming the field.
absl::StatusOr<std::unique_ptr<TrainableSelection>> MakeSelection(
    const RunSpec& spec, const LlamaModel& model) {
  if (!spec.trainable.Selects()) return nullptr;
  absl::StatusOr<std::unique_ptr<TrainableSelection>> selection =
      TrainableSelection::Create(spec.trainable, model, spec.seed);
  if (selection.ok()) return selection;
  // Create's errors read `field "<name>" ...`.
  const std::string message(selection.status().message());
  const size_t open = message.find('"') + 1;
  return WithErrorKind(selection.status(), ErrorKind::kUserOptions,
                       message.substr(open, message.find('"', open) - open));
}

}  // namespace

int64_t TotalSteps(const RunSpec& spec, size_t epoch_examples) {
  const int64_t examples_per_step =
      static_cast<int64_t>(spec.data.batch_size) *
      spec.optimizer.gradient_accumulation_steps;
  const int64_t steps_per_epoch =
      (static_cast<int64_t>(epoch_examples) + examples_per_step - 1) /
      examples_per_step;
  return steps_per_epoch * spec.schedule.n_epochs;
}

absl::StatusOr<TrainResult> RunLoop(const RunSpec& spec, LlamaModel& model,
                                    const std::vector<LoopStage>& stages,
                                    const TrainHooks& hooks,
                                    const GeneralSet* general) {
  const std::string hyperparameters = HyperparametersField(spec.objective);
  ASSIGN_OR_RETURN(const LrSchedule schedule,
                   WithErrorKind(ParseLrSchedule(spec.schedule.lr_scheduler),
                                 ErrorKind::kUserOptions,
                                 absl::StrCat(hyperparameters,
                                              ".lr_scheduler")));
  // A mixture's sources are fingerprinted by content, each (the first
  // source of the first stage as the run's training file).
  Json resume_keys = ResumeKeys(spec);
  const bool multi_stage = !spec.data.stages.empty();
  // A multi-worker run: this rank's share of each step, gradients summed
  // across the ranks; rank 0 alone writes checkpoints and the result.
  DataParallel* const dp =
      hooks.data_parallel != nullptr && hooks.data_parallel->world_size() > 1
          ? hooks.data_parallel
          : nullptr;
  const bool writer = dp == nullptr || dp->rank() == 0;
  if (dp != nullptr) {
    for (const LoopStage& stage : stages) {
      if (!stage.objective->data_parallel()) {
        return WithErrorKind(
            absl::FailedPreconditionError(absl::StrCat(
                "devices: ", stage.objective->Describe(),
                " trains on one worker only; set devices to 1")),
            ErrorKind::kUserOptions, "devices");
      }
    }
  }
  std::string training_file = spec.data.training_file;
  for (size_t s = 0; s < stages.size(); ++s) {
    const std::vector<MixtureSourceSpec>& sources =
        stages[s].spec->data.mixture.sources;
    for (size_t i = 0; i < sources.size(); ++i) {
      if (s == 0 && i == 0) {
        training_file = sources[0].file;
        continue;
      }
      ASSIGN_OR_RETURN(
          resume_keys[multi_stage
                          ? absl::StrCat("stages[", s, "].sources[", i,
                                         "].fnv1a64")
                          : absl::StrCat("mixture.sources[", i, "].fnv1a64")],
          FileFingerprint(sources[i].file));
    }
  }
  ASSIGN_OR_RETURN(const Json fingerprint,
                   RunFingerprint(std::move(resume_keys), spec.model.dir,
                                  training_file));
  const DataSpec& data_spec = spec.data;
  const OptimizerSpec& optimizer_spec = spec.optimizer;

  const std::vector<AdamW::Param> params =
      TrainableParams(model, spec.adapter);
  ASSIGN_OR_RETURN(std::unique_ptr<TrainableSelection> selection,
                   MakeSelection(spec, model));
  // With a selection, the optimizer holds only what is trained now (its
  // moments for the rest are never made, or dropped when they leave: see
  // select below).
  auto fresh_optimizer = [&] {
    return AdamW(selection != nullptr ? std::vector<AdamW::Param>{} : params,
                 AdamWOptions{.weight_decay = optimizer_spec.weight_decay});
  };
  AdamW optimizer = fresh_optimizer();

  // The stages' steps: stage s runs steps (first[s], first[s] + steps[s]].
  struct StagePlan {
    int64_t first = 0;  // steps before it
    int64_t steps = 0;
    int64_t steps_per_epoch = 1;
    int first_epoch = 0;  // epochs of the stages before it
    size_t examples = 0;
    const MixturePlan* mixture = nullptr;
  };
  std::vector<StagePlan> plans;
  int64_t total_steps = 0;
  int epochs = 0;
  for (const LoopStage& stage : stages) {
    StagePlan plan{.first = total_steps,
                   .first_epoch = epochs,
                   .examples = stage.objective->train_examples(),
                   .mixture = stage.objective->mixture()};
    plan.steps = TotalSteps(*stage.spec, plan.mixture != nullptr
                                             ? plan.mixture->EpochSize()
                                             : plan.examples);
    plan.steps_per_epoch =
        std::max<int64_t>(plan.steps / stage.spec->schedule.n_epochs, 1);
    total_steps += plan.steps;
    epochs += stage.spec->schedule.n_epochs;
    plans.push_back(plan);
  }
  // The stage whose state a checkpoint after `done` steps holds: the one
  // that ran step `done` (the first before any).
  auto stage_after = [&](int64_t done) {
    size_t s = 0;
    while (s + 1 < plans.size() && done > plans[s + 1].first) ++s;
    return s;
  };
  size_t stage = 0;
  auto start_cursor = [&](size_t s) {
    return DataCursor::Start(plans[s].examples, spec.seed, plans[s].mixture);
  };

  // The trainable selection for the step about to run: LISA's draws, HFT's
  // halves. The optimizer follows it: LISA's inactive layers lose their
  // AdamW moments and start fresh when drawn again (LMFlow keeps them; the
  // paper's memory saving needs them dropped, METHODS.md §4.2).
  auto use_selection = [&] {
    selection->Apply(model);
    optimizer.SetParams(Selected(params, *selection));
  };
  auto select = [&](int64_t step) {
    const StagePlan& plan = plans[stage];
    const int epoch = plan.first_epoch +
                      static_cast<int>((step - plan.first) /
                                       plan.steps_per_epoch);
    if (selection == nullptr ||
        !selection->Advance(step, epoch, static_cast<int>(stage))) {
      return;
    }
    use_selection();
    const Json state = selection->State();
    spdlog::info("step {}: training {} tensors, {:.1f}% of the parameters{}",
                 step, selection->trained().size(),
                 100 * state["trained_fraction"].get<double>(),
                 state.contains("draws")
                     ? absl::StrCat(" (LISA layers ",
                                    state["draws"].back()["layers"].dump(), ")")
                     : "");
  };

  // Fresh, or resumed.
  Progress progress;
  const std::string& resume_from = spec.checkpoint.resume_from;
  if (!resume_from.empty() && plans.size() > 1) {
    // The cursor restored must be of the checkpoint's stage. An unreadable
    // state is reported by the resume below.
    absl::StatusOr<Json> state =
        ReadJsonFile(absl::StrCat(resume_from, "/", kTrainerStateJson));
    if (state.ok() && state->contains("step") &&
        (*state)["step"].is_number_integer()) {
      stage = stage_after((*state)["step"].get<int64_t>());
    }
  }
  DataCursor data = start_cursor(stage);
  if (!resume_from.empty()) {
    std::function<absl::Status(const Json&)> restore_selection;
    if (selection != nullptr) {
      restore_selection = [&](const Json& state) -> absl::Status {
        // A checkpoint at step 0 has no selection yet.
        if (state.is_null()) return absl::OkStatus();
        RETURN_IF_ERROR(selection->Restore(state));
        use_selection();
        return absl::OkStatus();
      };
    }
    RETURN_IF_ERROR(ResumeRunCheckpoint(
        resume_from, TrainedWeightsFile(spec.adapter), params, optimizer,
        progress, data, total_steps, fingerprint, model.device(),
        restore_selection, model.generator()));
    RETURN_IF_ERROR(stages[stage].objective->LoadState(resume_from));
  } else {
    RETURN_IF_ERROR(stages[stage].objective->Prepare());
  }
  if (dp != nullptr) {
    // Every rank starts from rank 0's weights, as DDP does (they are equal
    // already: same seed, same checkpoint).
    std::vector<torch::Tensor> values;
    values.reserve(params.size());
    for (const AdamW::Param& p : params) values.push_back(p.value);
    RETURN_IF_ERROR(dp->Broadcast(values));
  }
  // The forgetting report's "before": the base model's loss, measured on a
  // fresh run and carried by the checkpoints (rank 0's).
  std::optional<HeldOutLoss> general_before;
  if (!writer) {
    // Rank 0 measures and reports it.
  } else if (general != nullptr && resume_from.empty()) {
    general_before = GeneralLossBefore(model, *general, spec);
  } else if (general != nullptr) {
    absl::StatusOr<Json> saved =
        ReadJsonFile(absl::StrCat(resume_from, "/", kGeneralBeforeFile));
    if (saved.ok() && saved->contains("loss") && saved->contains("tokens")) {
      general_before = HeldOutLoss{.loss = (*saved)["loss"].get<double>(),
                                   .tokens = (*saved)["tokens"].get<int64_t>()};
    } else {
      spdlog::warn("{} holds no {}: no forgetting report for this run",
                   resume_from, kGeneralBeforeFile);
    }
  }
  const LoraSpec* lora = Lora(spec.adapter);
  auto log_stage = [&] {
    const LoopStage& current = stages[stage];
    const StagePlan& plan = plans[stage];
    spdlog::info(
        "training {} on {} ({} on {}, {}{} examples, {} steps from step {}, "
        "lr {} {}, batch {} x {}, max_seq_len {}, seed {}, packing {}, "
        "activation checkpointing {}; {})",
        lora != nullptr ? absl::StrCat("LoRA r=", lora->rank)
        : std::holds_alternative<S2ftSpec>(spec.adapter)
            ? absl::StrCat("S²FT slices (",
                           std::accumulate(params.begin(), params.end(), int64_t{0},
                                           [](int64_t n, const AdamW::Param& p) {
                                             return n + p.value.numel();
                                           }),
                           " parameters)")
            : "all weights",
        spec.model.dir, c10::toString(model.compute_dtype()),
        model.device().str(),
        multi_stage ? absl::StrCat("stage ", stage + 1, "/", stages.size(),
                                   " \"", current.name, "\", ")
                    : "",
        plan.examples, total_steps, progress.step,
        optimizer_spec.learning_rate, spec.schedule.lr_scheduler,
        data_spec.batch_size, optimizer_spec.gradient_accumulation_steps,
        data_spec.max_seq_len, spec.seed, data_spec.packing,
        spec.device.activation_checkpointing,
        current.objective->Describe());
  };
  log_stage();

  TrainResult result;
  for (const LoopStage& s : stages) {
    result.truncated_examples += s.objective->truncated_examples();
  }
  StepMetrics m;
  m.step = progress.step;
  m.total_steps = total_steps;
  // The step whose checkpoint exists: the one resumed from, then the ones
  // this run writes. A stop right after a resume does not write (and
  // upload) the same step again.
  int64_t checkpointed_step = resume_from.empty() ? -1 : progress.step;
  auto checkpoint = [&]() -> absl::Status {
    if (!writer) {
      checkpointed_step = progress.step;
      return absl::OkStatus();
    }
    auto save_state = [&](const std::string& dir) -> absl::Status {
      // float32 whatever the source dtype, so that resuming is exact.
      RETURN_IF_ERROR(SaveTrained(model, spec.adapter, spec.model, dir,
                                  torch::kFloat32, spec.seed));
      if (general_before.has_value()) {
        RETURN_IF_ERROR(WriteJsonFile(
            absl::StrCat(dir, "/", kGeneralBeforeFile),
            {{"loss", general_before->loss},
             {"tokens", general_before->tokens}}));
      }
      return stages[stage].objective->SaveState(dir);
    };
    ASSIGN_OR_RETURN(SavedCheckpoint saved,
                     SaveRunCheckpoint(
                         spec.checkpoint, save_state, optimizer, progress,
                         data, total_steps, fingerprint, model.device(),
                         selection != nullptr && !selection->trained().empty()
                             ? selection->State()
                             : Json(nullptr),
                         model.generator()));
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
    StopRequest stop =
        hooks.should_stop ? hooks.should_stop() : StopRequest::kNone;
    if (dp != nullptr) {
      // The ranks stop together, at the same step: the strongest request
      // of any (a cancel over a pause).
      const int64_t local = stop == StopRequest::kCancel              ? 2
                            : stop == StopRequest::kCheckpointAndStop ? 1
                                                                      : 0;
      ASSIGN_OR_RETURN(const int64_t agreed, dp->Max(local));
      stop = agreed == 2   ? StopRequest::kCancel
             : agreed == 1 ? StopRequest::kCheckpointAndStop
                           : StopRequest::kNone;
    }
    if (stop == StopRequest::kCancel) {
      return absl::CancelledError(
          absl::StrCat("cancelled at step ", progress.step));
    }
    if (stop == StopRequest::kCheckpointAndStop) {
      if (checkpointed_step != progress.step) RETURN_IF_ERROR(checkpoint());
      return absl::AbortedError(absl::StrCat("stopped at step ", progress.step,
                                             " after checkpointing"));
    }
    // The next stage, when this one has run its steps: its data from the
    // start, a fresh optimizer (on the selection's tensors), the seed again.
    if (progress.step == plans[stage].first + plans[stage].steps) {
      ++stage;
      data = start_cursor(stage);
      optimizer = fresh_optimizer();
      if (selection != nullptr && !selection->trained().empty()) {
        use_selection();
      }
      ReseedGenerator(model, spec.seed);
      RETURN_IF_ERROR(stages[stage].objective->Prepare());
      log_stage();
    }
    const StagePlan& plan = plans[stage];
    const LoopStage& current = stages[stage];
    Objective& objective = *current.objective;

    const auto start = std::chrono::steady_clock::now();
    m = StepMetrics{.step = progress.step + 1, .total_steps = total_steps};
    if (multi_stage) m.stage = static_cast<int>(stage) + 1;
    m.learning_rate = LearningRateAt(
        schedule, progress.step - plan.first, plan.steps,
        spec.schedule.warmup_steps, optimizer_spec.learning_rate);
    select(progress.step);
    optimizer.ZeroGrad();
    std::vector<std::vector<size_t>> micro_batches = data.TakeStep(
        data_spec.batch_size, optimizer_spec.gradient_accumulation_steps);
    if (dp != nullptr) micro_batches = dp->Shard(micro_batches);
    StepWork work;
    if (!micro_batches.empty()) {
      ASSIGN_OR_RETURN(work, objective.Step(micro_batches, m.step - plan.first));
    }
    if (dp != nullptr) {
      // The whole step's figures and gradient from every rank's share.
      ASSIGN_OR_RETURN(const double total,
                       dp->AllReduceGradients(optimizer.tensors(), work.weight));
      std::vector<double> sums{work.loss * work.weight,
                               work.token_accuracy * work.accuracy_weight,
                               work.accuracy_weight,
                               static_cast<double>(work.tokens),
                               static_cast<double>(work.padding)};
      RETURN_IF_ERROR(dp->SumInPlace(sums));
      ASSIGN_OR_RETURN(work.values,
                       dp->WeightedMeans(work.values, work.weight, total));
      work.loss = total > 0 ? sums[0] / total : 0;
      work.token_accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0;
      work.tokens = static_cast<int64_t>(sums[3]);
      work.padding = static_cast<int64_t>(sums[4]);
    }
    m.loss = work.loss;
    m.token_accuracy = work.token_accuracy;
    m.values = std::move(work.values);
    result.padding_tokens += work.padding;
    result.loss_peak_bytes =
        std::max(result.loss_peak_bytes, work.loss_peak_bytes);
    if (!std::isfinite(m.loss)) {
      // Retrying would diverge the same way: stop and say what to change.
      // The weights are left as they were before the step.
      return WithErrorKind(
          absl::OutOfRangeError(absl::StrCat(
              "nan_loss: the training loss became ", m.loss, " at step ",
              m.step,
              "; lower the learning rate (learning_rate_multiplier) or check "
              "the data")),
          ErrorKind::kUserOptions,
          absl::StrCat(hyperparameters, ".learning_rate_multiplier"));
    }
    m.grad_norm = torch::nn::utils::clip_grad_norm_(
        optimizer.tensors(), optimizer_spec.max_grad_norm);
    optimizer.Step(m.learning_rate);
    const std::chrono::duration<double> seconds =
        std::chrono::steady_clock::now() - start;
    m.tokens_per_second = work.tokens / std::max(seconds.count(), 1e-9);

    progress.step = m.step;
    progress.trained_tokens += work.tokens;
    if (m.step == 1) progress.first_loss = m.loss;
    progress.last_loss = m.loss;
    m.trained_tokens = progress.trained_tokens;
    // Validation every eval_every steps and at the end of each stage.
    if (writer && objective.has_validation() &&
        ((eval_every > 0 && m.step % eval_every == 0) ||
         m.step == plan.first + plan.steps)) {
      Record(objective.Evaluate(), m);
    }
    if (hooks.on_step) hooks.on_step(m);
    if (checkpoint_every > 0 && m.step % checkpoint_every == 0) {
      RETURN_IF_ERROR(checkpoint());
    }
  }

  if (spec.checkpoint.at_end && !spec.checkpoint.dir.empty() &&
      checkpointed_step != progress.step) {
    RETURN_IF_ERROR(checkpoint());
  }

  // Export.
  Objective& last = *stages[stage].objective;
  result.steps = progress.step;
  result.trained_tokens = progress.trained_tokens;
  result.first_loss = progress.first_loss;
  result.last_loss = progress.last_loss;
  // The other ranks' weights equal rank 0's, which writes the result.
  if (!writer) return result;
  if (last.has_validation()) {
    result.validation_loss = m.validation_loss.has_value()
                                 ? *m.validation_loss
                                 : last.Evaluate().loss;
  }
  if (lora != nullptr && spec.evaluation.intruder_top_k > 0) {
    result.intruders = LoraIntruders(model, spec.evaluation.intruder_top_k,
                                     spec.evaluation.intruder_epsilon);
    int total = 0;
    for (const IntruderMatrix& m : result.intruders) total += m.intruders;
    spdlog::info("intruder dimensions: {} over {} adapted matrices (top {}, "
                 "epsilon {})",
                 total, result.intruders.size(),
                 spec.evaluation.intruder_top_k,
                 spec.evaluation.intruder_epsilon);
  }
  // PEFT's intruder-dimension mitigation (METHODS.md §9.2): the result
  // (and the forgetting report's "after") is the mitigated adapter.
  if (lora != nullptr && spec.evaluation.intruder_mitigation_lambda >= 0) {
    const std::vector<IntruderMatrix> mitigated = MitigateIntruders(
        model, spec.evaluation.intruder_top_k > 0 ? spec.evaluation.intruder_top_k : 10,
        spec.evaluation.intruder_epsilon, spec.evaluation.intruder_mitigation_lambda,
        LoraScale(*lora), lora->rank);
    int changed = 0;
    for (const IntruderMatrix& m : mitigated) changed += m.intruders > 0;
    result.intruders_mitigated = changed;
    spdlog::info("intruder mitigation (lambda {}): {} of {} adapted matrices re-factorised",
                 spec.evaluation.intruder_mitigation_lambda, changed, mitigated.size());
  }
  if (general_before.has_value()) {
    result.forgetting = ForgettingAfter(model, *general, spec, *general_before);
  }
  RETURN_IF_ERROR(
      ExportResult(model, spec.adapter, spec.model, spec.output, spec.seed));
  if (selection != nullptr) {
    // The manifest: what was trained (LISA's draws, HFT's halves).
    RETURN_IF_ERROR(WriteJsonFile(spec.output.dir + "/" + kSelectionManifest,
                                  selection->State()));
  }
  return result;
}

}  // namespace lathe::engine
