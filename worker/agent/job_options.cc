#include "worker/agent/job_options.h"

#include "absl/strings/str_cat.h"
#include "common/job_method.h"

namespace lathe::worker {
namespace {

struct SchedulerName {
  v1::LrScheduler wire;
  const char* engine;  // ScheduleSpec::lr_scheduler
};
constexpr SchedulerName kSchedulers[] = {
    {v1::LR_SCHEDULER_LINEAR, "linear"},
    {v1::LR_SCHEDULER_COSINE, "cosine"},
    {v1::LR_SCHEDULER_CONSTANT, "constant"},
};

struct ReselectName {
  v1::HalfFtReselect wire;
  const char* engine;  // HalfFtSpec::reselect
};
constexpr ReselectName kReselects[] = {
    {v1::HALF_FT_RESELECT_STAGE, "stage"},
    {v1::HALF_FT_RESELECT_EPOCH, "epoch"},
};

absl::StatusOr<engine::TrainableSpec> TrainableForJob(
    const v1::Trainable& wire) {
  engine::TrainableSpec t;
  t.layers.assign(wire.layers().begin(), wire.layers().end());
  t.modules.assign(wire.modules().begin(), wire.modules().end());
  if (wire.has_lisa()) {
    t.lisa =
        engine::LisaSpec{.activated_layers = wire.lisa().activated_layers(),
                         .interval_steps = wire.lisa().interval_steps()};
  }
  if (wire.has_half_ft()) {
    engine::HalfFtSpec half{
        .reselect = "",
        .seed = static_cast<uint64_t>(wire.half_ft().seed()),
        .fraction = wire.half_ft().fraction(),
        .include_embeddings = wire.half_ft().include_embeddings()};
    for (const ReselectName& r : kReselects) {
      if (r.wire == wire.half_ft().reselect()) half.reselect = r.engine;
    }
    if (half.reselect.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trainable.half_ft.reselect: ",
                       v1::HalfFtReselect_Name(wire.half_ft().reselect()),
                       " is not resolved"));
    }
    t.half_ft = half;
  }
  return t;
}

struct StrategyName {
  v1::MixtureStrategy wire;
  const char* engine;  // MixtureSpec::strategy
};
constexpr StrategyName kStrategies[] = {
    {v1::MIXTURE_STRATEGY_CONCAT, "concat"},
    {v1::MIXTURE_STRATEGY_WEIGHTED, "weighted"},
    {v1::MIXTURE_STRATEGY_TEMPERATURE, "temperature"},
};
struct StopName {
  v1::MixtureStop wire;
  const char* engine;  // MixtureSpec::stop
};
constexpr StopName kStops[] = {
    {v1::MIXTURE_STOP_FIRST_EXHAUSTED, "first_exhausted"},
    {v1::MIXTURE_STOP_ALL_EXHAUSTED, "all_exhausted"},
};
struct ScheduleName {
  v1::MaskRateSchedule wire;
  const char* engine;  // MaskedThoughtSpec::schedule
};
constexpr ScheduleName kMaskSchedules[] = {
    {v1::MASK_RATE_SCHEDULE_LINEAR_WARMUP, "linear_warmup"},
    {v1::MASK_RATE_SCHEDULE_CONSTANT, "constant"},
};

// The engine name of `wire` in `table`, or "" when it has none.
template <typename Table, typename Wire>
std::string EngineName(const Table& table, Wire wire) {
  for (const auto& entry : table) {
    if (entry.wire == wire) return entry.engine;
  }
  return "";
}
template <typename Table>
auto WireValue(const Table& table, const std::string& engine) {
  for (const auto& entry : table) {
    if (engine == entry.engine) return entry.wire;
  }
  return decltype(table[0].wire){};
}

// The mixture as the engine's data.mixture. The sources' file and
// validation_file hold the job's file ids here; the agent puts the fetched
// paths in their place (attempt_setup.h).
// `field`: where the job holds it ("training_mixture",
// "stages[1].training_mixture"), for the sources' file names.
absl::Status MixtureForJob(const v1::Mixture& wire, const std::string& field,
                           engine::MixtureSpec& m) {
  m.strategy = EngineName(kStrategies, wire.strategy());
  m.stop = EngineName(kStops, wire.stop());
  if (m.strategy.empty() || m.stop.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": its strategy or stop is not resolved"));
  }
  m.temperature = wire.temperature();
  for (int i = 0; i < wire.sources_size(); ++i) {
    const v1::MixtureSource& s = wire.sources(i);
    m.sources.push_back(
        {.name = s.name(),
         .file = s.file_id(),
         .file_name = absl::StrCat(field, ".sources[", i, "].file_id ",
                                   s.file_id()),
         .validation_file = s.validation_file_id(),
         .validation_file_name =
             s.validation_file_id().empty()
                 ? ""
                 : absl::StrCat(field, ".sources[", i,
                                "].validation_file_id ",
                                s.validation_file_id()),
         .weight = s.weight(),
         .proportion = s.proportion(),
         .fraction = s.fraction()});
  }
  return absl::OkStatus();
}

struct LossName {
  v1::PreferenceLoss wire;
  const char* engine;  // DpoSpec::loss_type
};
constexpr LossName kLosses[] = {
    {v1::PREFERENCE_LOSS_SIGMOID, "sigmoid"},
    {v1::PREFERENCE_LOSS_ROBUST, "robust"},
    {v1::PREFERENCE_LOSS_HINGE, "hinge"},
    {v1::PREFERENCE_LOSS_IPO, "ipo"},
};

struct InitName {
  v1::PromptTuningInit wire;
  const char* engine;  // PromptTuningSpec::init
};
constexpr InitName kInits[] = {
    {v1::PROMPT_TUNING_INIT_RANDOM, "random"},
    {v1::PROMPT_TUNING_INIT_TEXT, "text"},
    {v1::PROMPT_TUNING_INIT_SAMPLE_VOCAB, "sample_vocab"},
};

}  // namespace

absl::StatusOr<engine::RunSpec> RunSpecForJob(const v1::Job& job) {
  engine::RunSpec spec;
  spec.model.base_model_name = job.model();
  spec.seed = static_cast<uint64_t>(job.seed());
  switch (job.adapter()) {
    case v1::ADAPTER_TYPE_LORA: {
      const v1::LoraConfig& wire = job.lora();
      engine::LoraSpec lora;
      lora.rank = wire.rank();
      lora.alpha = wire.alpha();
      lora.dropout = wire.dropout();
      lora.use_rslora = wire.use_rslora();
      lora.target_modules.assign(wire.target_modules().begin(),
                                 wire.target_modules().end());
      lora.use_dora = wire.use_dora();
      lora.layers_to_transform.assign(wire.layers_to_transform().begin(),
                                      wire.layers_to_transform().end());
      spec.adapter = lora;
      break;
    }
    case v1::ADAPTER_TYPE_FULL:
      spec.adapter = engine::FullSpec{};
      break;
    case v1::ADAPTER_TYPE_S2FT: {
      const v1::S2ftConfig& wire = job.s2ft();
      if (!wire.has_seed()) {
        return absl::InvalidArgumentError("s2ft.seed: is not resolved");
      }
      spec.adapter = engine::S2ftSpec{.d_ratio = wire.d_ratio(),
                                      .u_ratio = wire.u_ratio(),
                                      .o_ratio = wire.o_ratio(),
                                      .v_ratio = wire.v_ratio(),
                                      .seed = wire.seed()};
      break;
    }
    case v1::ADAPTER_TYPE_PROMPT_TUNING: {
      const v1::PromptTuningMethod& wire = job.method().prompt_tuning();
      engine::PromptTuningSpec prompt;
      prompt.num_virtual_tokens = wire.num_virtual_tokens();
      prompt.init.clear();
      for (const InitName& i : kInits) {
        if (i.wire == wire.init()) prompt.init = i.engine;
      }
      if (prompt.init.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("method.prompt_tuning.init: ",
                         v1::PromptTuningInit_Name(wire.init()), " is not resolved"));
      }
      prompt.init_text = wire.init_text();
      spec.adapter = prompt;
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("adapter: ", v1::AdapterType_Name(job.adapter()),
                       " is not resolved"));
  }
  if (job.has_trainable()) {
    absl::StatusOr<engine::TrainableSpec> trainable =
        TrainableForJob(job.trainable());
    if (!trainable.ok()) return trainable.status();
    spec.trainable = *std::move(trainable);
  }
  // Jobs stored before method.type was always set are supervised.
  const std::string type = MethodType(job.method());
  const v1::Hyperparameters& hp = MethodHyperparameters(job.method());
  const std::string prefix = HyperparametersPrefix(job.method());
  if (type == "rft") {
    const v1::RftMethod& wire = job.method().rft();
    engine::SelfTrainingSpec& st = spec.self_training;
    st.iterations = wire.iterations();
    st.samples_per_prompt = wire.samples_per_prompt();
    st.temperature = wire.temperature();
    st.top_p = wire.top_p();
    st.max_new_tokens = wire.max_new_tokens();
    st.answer_extractor = wire.answer_extractor();
    st.answer_pattern = wire.answer_pattern();
    st.dedupe = wire.dedupe();
    st.include_gold = wire.include_gold();
    st.init = wire.init();
    if (st.iterations < 1 || st.answer_extractor.empty() || st.dedupe.empty() ||
        st.init.empty()) {
      return absl::InvalidArgumentError("method.rft: not resolved");
    }
  }
  if (type == "spin") {
    const v1::SpinMethod& wire = job.method().spin();
    engine::SelfTrainingSpec& st = spec.self_training;
    st.iterations = wire.iterations();
    st.samples_per_prompt = 1;
    st.temperature = wire.temperature();
    st.top_p = wire.top_p();
    st.max_new_tokens = wire.max_new_tokens();
    st.accumulate_previous = wire.accumulate_previous();
    if (st.iterations < 1) return absl::InvalidArgumentError("method.spin: not resolved");
  }
  if (type == "supervised" || type == "prompt_tuning" || type == "rft") {
    engine::SftSpec sft;
    if (job.method().supervised().has_masked_thought()) {
      const v1::MaskedThought& wire = job.method().supervised().masked_thought();
      engine::MaskedThoughtSpec& mt = sft.masked_thought;
      mt.mask_rate = wire.mask_rate();
      mt.schedule = EngineName(kMaskSchedules, wire.schedule());
      if (mt.schedule.empty()) {
        return absl::InvalidArgumentError(
            "method.supervised.masked_thought.schedule: not resolved");
      }
      mt.warmup_ratio = wire.warmup_ratio();
      mt.mask_token = wire.has_mask_token_id()
                          ? absl::StrCat(wire.mask_token_id())
                          : "pad";
    }
    spec.objective = sft;
  } else if (type == "dpo" || type == "spin") {
    engine::DpoSpec dpo;
    dpo.beta = hp.beta();
    dpo.loss_type.clear();
    for (const LossName& l : kLosses) {
      if (l.wire == hp.loss_type()) dpo.loss_type = l.engine;
    }
    if (dpo.loss_type.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "loss_type: ",
                       v1::PreferenceLoss_Name(hp.loss_type()),
                       " is not resolved"));
    }
    dpo.label_smoothing = hp.label_smoothing();
    dpo.rpo_alpha = hp.rpo_alpha();
    dpo.max_prompt_len = hp.max_prompt_len();
    spec.objective = dpo;
  } else if (type == "orpo") {
    engine::OrpoSpec orpo;
    orpo.lambda = hp.beta();
    orpo.max_prompt_len = hp.max_prompt_len();
    spec.objective = orpo;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "method.type: \"", job.method().type(), "\" has no engine recipe"));
  }
  if (job.training_mixture().sources_size() > 0) {
    if (absl::Status s = MixtureForJob(job.training_mixture(),
                                       "training_mixture", spec.data.mixture);
        !s.ok()) {
      return s;
    }
  }
  for (int i = 0; i < job.stages_size(); ++i) {
    const v1::TrainingStage& wire = job.stages(i);
    engine::StageSpec& stage = spec.data.stages.emplace_back();
    stage.name = wire.name();
    stage.n_epochs = wire.n_epochs();
    if (absl::Status s = MixtureForJob(
            wire.training_mixture(),
            absl::StrCat("stages[", i, "].training_mixture"), stage.mixture);
        !s.ok()) {
      return s;
    }
  }
  // After-job reports: the general file's id here; the agent puts the
  // fetched path in its place (attempt_setup.h).
  spec.evaluation.general_file = job.reports().general_file();
  spec.evaluation.general_tokens =
      job.reports().all_tokens() ? "all" : "assistant";
  // Jobs stored before reports were resolved count no intruders.
  spec.evaluation.intruder_top_k = job.reports().intruder_top_k();
  if (job.reports().intruder_epsilon() > 0) {
    spec.evaluation.intruder_epsilon = job.reports().intruder_epsilon();
  }
  if (job.reports().has_intruder_mitigation_lambda()) {
    spec.evaluation.intruder_mitigation_lambda = job.reports().intruder_mitigation_lambda();
  }
  spec.schedule.n_epochs = hp.n_epochs();
  spec.data.batch_size = hp.batch_size();
  spec.optimizer.learning_rate = hp.learning_rate();
  spec.schedule.warmup_steps = hp.warmup_steps();
  spec.schedule.lr_scheduler.clear();
  for (const SchedulerName& s : kSchedulers) {
    if (s.wire == hp.lr_scheduler()) spec.schedule.lr_scheduler = s.engine;
  }
  if (spec.schedule.lr_scheduler.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "lr_scheduler: ",
        v1::LrScheduler_Name(hp.lr_scheduler()), " is not resolved"));
  }
  spec.optimizer.weight_decay = hp.weight_decay();
  spec.optimizer.gradient_accumulation_steps =
      hp.gradient_accumulation_steps();
  spec.data.max_seq_len = hp.max_seq_len();
  spec.evaluation.every_steps = hp.eval_every_steps();
  spec.optimizer.max_grad_norm = hp.max_grad_norm();
  spec.checkpoint.every_steps = hp.checkpoint_every_steps();
  return spec;
}

v1::Job JobForRunSpec(const engine::RunSpec& spec) {
  v1::Job job;
  job.set_model(spec.model.base_model_name);
  job.set_seed(static_cast<int64_t>(spec.seed));
  if (const engine::LoraSpec* lora = engine::Lora(spec.adapter)) {
    job.set_adapter(v1::ADAPTER_TYPE_LORA);
    v1::LoraConfig& wire = *job.mutable_lora();
    wire.set_rank(lora->rank);
    wire.set_alpha(lora->alpha);
    wire.set_dropout(lora->dropout);
    wire.set_use_rslora(lora->use_rslora);
    for (const std::string& m : lora->target_modules) {
      wire.add_target_modules(m);
    }
    wire.set_use_dora(lora->use_dora);
    for (int layer : lora->layers_to_transform)
      wire.add_layers_to_transform(layer);
  } else if (std::holds_alternative<engine::PromptTuningSpec>(spec.adapter)) {
    job.set_adapter(v1::ADAPTER_TYPE_PROMPT_TUNING);
  } else if (const auto* s2 = std::get_if<engine::S2ftSpec>(&spec.adapter)) {
    job.set_adapter(v1::ADAPTER_TYPE_S2FT);
    v1::S2ftConfig& wire = *job.mutable_s2ft();
    wire.set_d_ratio(s2->d_ratio);
    wire.set_u_ratio(s2->u_ratio);
    wire.set_o_ratio(s2->o_ratio);
    wire.set_v_ratio(s2->v_ratio);
    wire.set_seed(s2->seed >= 0 ? s2->seed : static_cast<int64_t>(spec.seed));
  } else {
    job.set_adapter(v1::ADAPTER_TYPE_FULL);
  }
  if (spec.trainable.Selects()) {
    const engine::TrainableSpec& t = spec.trainable;
    v1::Trainable& wire = *job.mutable_trainable();
    for (const std::string& l : t.layers) wire.add_layers(l);
    for (const std::string& m : t.modules) wire.add_modules(m);
    if (t.lisa) {
      wire.mutable_lisa()->set_activated_layers(t.lisa->activated_layers);
      wire.mutable_lisa()->set_interval_steps(t.lisa->interval_steps);
    }
    if (t.half_ft) {
      for (const ReselectName& r : kReselects) {
        if (t.half_ft->reselect == r.engine)
          wire.mutable_half_ft()->set_reselect(r.wire);
      }
      wire.mutable_half_ft()->set_seed(static_cast<int64_t>(t.half_ft->seed));
      wire.mutable_half_ft()->set_fraction(t.half_ft->fraction);
      wire.mutable_half_ft()->set_include_embeddings(
          t.half_ft->include_embeddings);
    }
  }
  const std::string type = engine::ObjectiveType(spec.objective);
  const auto* prompt = std::get_if<engine::PromptTuningSpec>(&spec.adapter);
  const engine::SelfTrainingSpec& st = spec.self_training;
  const bool self_training = st.iterations > 0;
  job.mutable_method()->set_type(prompt != nullptr                     ? "prompt_tuning"
                                 : self_training && type == "dpo" ? "spin"
                                 : self_training                  ? "rft"
                                 : type == "sft"                  ? "supervised"
                                                                  : type);
  if (self_training && type == "dpo") {
    v1::SpinMethod& wire = *job.mutable_method()->mutable_spin();
    wire.set_iterations(st.iterations);
    wire.set_temperature(st.temperature);
    wire.set_top_p(st.top_p);
    wire.set_max_new_tokens(st.max_new_tokens);
    wire.set_accumulate_previous(st.accumulate_previous);
  } else if (self_training) {
    v1::RftMethod& wire = *job.mutable_method()->mutable_rft();
    wire.set_iterations(st.iterations);
    wire.set_samples_per_prompt(st.samples_per_prompt);
    wire.set_temperature(st.temperature);
    wire.set_top_p(st.top_p);
    wire.set_max_new_tokens(st.max_new_tokens);
    wire.set_answer_extractor(st.answer_extractor);
    wire.set_answer_pattern(st.answer_pattern);
    wire.set_dedupe(st.dedupe);
    wire.set_include_gold(st.include_gold);
    wire.set_init(st.init);
  }
  if (prompt != nullptr) {
    v1::PromptTuningMethod& wire = *job.mutable_method()->mutable_prompt_tuning();
    wire.set_num_virtual_tokens(prompt->num_virtual_tokens);
    for (const InitName& i : kInits) {
      if (prompt->init == i.engine) wire.set_init(i.wire);
    }
    wire.set_init_text(prompt->init_text);
  }
  v1::Hyperparameters& hp = *MutableMethodHyperparameters(*job.mutable_method());
  if (const auto* dpo = std::get_if<engine::DpoSpec>(&spec.objective)) {
    hp.set_beta(dpo->beta);
    for (const LossName& l : kLosses) {
      if (dpo->loss_type == l.engine) hp.set_loss_type(l.wire);
    }
    hp.set_label_smoothing(dpo->label_smoothing);
    hp.set_rpo_alpha(dpo->rpo_alpha);
    hp.set_max_prompt_len(dpo->max_prompt_len);
  }
  if (const auto* orpo = std::get_if<engine::OrpoSpec>(&spec.objective)) {
    hp.set_beta(orpo->lambda);
    hp.set_max_prompt_len(orpo->max_prompt_len);
  }
  hp.set_n_epochs(spec.schedule.n_epochs);
  hp.set_batch_size(spec.data.batch_size);
  hp.set_learning_rate(spec.optimizer.learning_rate);
  hp.set_warmup_steps(spec.schedule.warmup_steps);
  for (const SchedulerName& s : kSchedulers) {
    if (spec.schedule.lr_scheduler == s.engine) hp.set_lr_scheduler(s.wire);
  }
  hp.set_weight_decay(spec.optimizer.weight_decay);
  hp.set_gradient_accumulation_steps(
      spec.optimizer.gradient_accumulation_steps);
  hp.set_max_seq_len(spec.data.max_seq_len);
  hp.set_eval_every_steps(spec.evaluation.every_steps);
  v1::Reports& reports = *job.mutable_reports();
  reports.set_general_file(spec.evaluation.general_file);
  reports.set_all_tokens(spec.evaluation.general_tokens == "all");
  reports.set_intruder_top_k(spec.evaluation.intruder_top_k);
  reports.set_intruder_epsilon(spec.evaluation.intruder_epsilon);
  if (spec.evaluation.intruder_mitigation_lambda >= 0) {
    reports.set_intruder_mitigation_lambda(spec.evaluation.intruder_mitigation_lambda);
  }
  hp.set_max_grad_norm(spec.optimizer.max_grad_norm);
  hp.set_checkpoint_every_steps(spec.checkpoint.every_steps);
  const auto* sft = std::get_if<engine::SftSpec>(&spec.objective);
  if (sft != nullptr && sft->masked_thought.mask_rate > 0) {
    const engine::MaskedThoughtSpec& mt = sft->masked_thought;
    v1::MaskedThought& wire =
        *job.mutable_method()->mutable_supervised()->mutable_masked_thought();
    wire.set_mask_rate(mt.mask_rate);
    wire.set_schedule(WireValue(kMaskSchedules, mt.schedule));
    wire.set_warmup_ratio(mt.warmup_ratio);
    if (mt.mask_token != "pad") wire.set_mask_token_id(std::stoi(mt.mask_token));
  }
  auto mixture_wire = [](const engine::MixtureSpec& m, v1::Mixture& wire) {
    wire.set_strategy(WireValue(kStrategies, m.strategy));
    wire.set_stop(WireValue(kStops, m.stop));
    wire.set_temperature(m.temperature);
    for (const engine::MixtureSourceSpec& s : m.sources) {
      v1::MixtureSource& source = *wire.add_sources();
      source.set_name(s.name);
      source.set_file_id(s.file);
      source.set_validation_file_id(s.validation_file);
      source.set_weight(s.weight);
      source.set_proportion(s.proportion);
      source.set_fraction(s.fraction);
    }
  };
  if (!spec.data.mixture.sources.empty()) {
    mixture_wire(spec.data.mixture, *job.mutable_training_mixture());
  }
  for (size_t i = 0; i < spec.data.stages.size(); ++i) {
    const engine::StageSpec& stage = spec.data.stages[i];
    v1::TrainingStage& wire = *job.add_stages();
    wire.set_name(stage.name.empty() ? absl::StrCat("stage-", i + 1)
                                     : stage.name);
    wire.set_n_epochs(stage.n_epochs > 0 ? stage.n_epochs
                                         : spec.schedule.n_epochs);
    mixture_wire(stage.mixture, *wire.mutable_training_mixture());
  }
  return job;
}

v1::JobReport ReportForResult(const engine::RunSpec& spec,
                              const engine::TrainResult& result) {
  v1::JobReport report;
  if (result.forgetting.has_value()) {
    const engine::ForgettingReport& f = *result.forgetting;
    v1::ForgettingReport& wire = *report.mutable_forgetting();
    wire.set_loss_before(f.loss_before);
    wire.set_loss_after(f.loss_after);
    wire.set_delta(f.delta());
    wire.set_ppl_ratio(f.ppl_ratio());
    wire.set_tokens(f.tokens);
    wire.set_tokens_counted(f.tokens_counted);
  }
  if (!result.intruders.empty()) {
    v1::IntruderReport& wire = *report.mutable_intruders();
    wire.set_top_k(spec.evaluation.intruder_top_k);
    wire.set_epsilon(spec.evaluation.intruder_epsilon);
    int total = 0;
    for (const engine::IntruderMatrix& m : result.intruders) {
      v1::IntruderMatrix& matrix = *wire.add_matrices();
      matrix.set_name(m.name);
      matrix.set_intruders(m.intruders);
      matrix.set_min_similarity(m.min_similarity);
      total += m.intruders;
    }
    wire.set_total(total);
    if (result.intruders_mitigated.has_value()) {
      wire.set_mitigation_lambda(spec.evaluation.intruder_mitigation_lambda);
      wire.set_mitigated_matrices(*result.intruders_mitigated);
    }
  }
  for (const engine::IterationReport& r : result.iterations) {
    v1::IterationSummary& wire = *report.add_iterations();
    wire.set_iteration(r.iteration);
    wire.set_prompts(r.prompts);
    wire.set_samples(r.samples);
    wire.set_correct(r.correct);
    wire.set_kept(r.kept);
    wire.set_rft_examples(r.rft_examples);
    wire.set_accepted_fraction(r.accepted_fraction());
    wire.set_first_step(r.first_step);
    wire.set_last_step(r.last_step);
    wire.set_first_loss(r.first_loss);
    wire.set_last_loss(r.last_loss);
  }
  return report;
}

absl::StatusOr<engine::MergeSpec> MergeSpecForJob(const v1::Job& job) {
  const v1::MergeMethod& m = job.method().merge();
  engine::MergeSpec spec;
  absl::StatusOr<engine::MergeMethod> method =
      engine::ParseMergeMethod(m.merge_method());
  if (!method.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("method.merge.merge_method: ", method.status().message()));
  }
  absl::StatusOr<engine::MajoritySign> sign =
      engine::ParseMajoritySign(m.majority_sign());
  if (!sign.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("method.merge.majority_sign: ", sign.status().message()));
  }
  spec.params = {.method = *method,
                 .weights = {m.weights().begin(), m.weights().end()},
                 .lambda = m.lambda(),
                 .density = m.density(),
                 .majority_sign = *sign,
                 .beta = m.beta(),
                 .gamma = m.gamma(),
                 .lines_alpha = m.lines_alpha(),
                 .lines_beta = m.lines_beta(),
                 .seed = static_cast<uint64_t>(job.seed())};
  for (const std::string& input : m.inputs()) {
    spec.inputs.push_back({.dir = "", .name = input});
  }
  if (m.has_lora_rank()) {  // the job's result is the LoRA export
    spec.lora.rank = m.lora_rank();
    spec.lora.target_modules.assign(m.lora_target_modules().begin(),
                                    m.lora_target_modules().end());
  }
  return spec;
}

}  // namespace lathe::worker
