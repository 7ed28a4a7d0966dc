#include "worker/agent/job_options.h"

#include <cmath>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "common/job_method.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/message_differencer.h"
#include "nlohmann/json.hpp"

namespace lathe::worker {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// Fields settled on the server that the engine never needs: job resolution
// turns the multiplier into hyperparameters.learning_rate.
const std::set<std::string> kServerOnly = {
    "lathe.v1.Hyperparameters.learning_rate_multiplier",
};

// Sets every field of `m` to a value of its own (the n-th field gets
// numbers around n), enums to their last value, repeated strings to two
// distinct known names.
// Fields of the hyperparameters that a method does not take.
const std::set<std::string> kPreference = {"beta", "loss_type", "label_smoothing",
                                           "rpo_alpha", "max_prompt_len"};
const std::set<std::string> kDpoOnly = {"loss_type", "label_smoothing", "rpo_alpha"};

void SetEveryField(Message& m, const std::set<std::string>& skip = {}) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (kServerOnly.count(f->full_name()) || skip.count(f->name())) continue;
    const int n = i + 2;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        if (f->is_repeated()) {
          r->AddInt32(&m, f, 10 * n + 1);
          r->AddInt32(&m, f, 10 * n + 2);
        } else {
          r->SetInt32(&m, f, 10 * n + 1);
        }
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        ASSERT_FALSE(f->is_repeated()) << f->full_name();
        SetEveryField(*r->MutableMessage(&m, f));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(&m, f, 10 * n + 3);
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(&m, f, 0.125 * n);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(&m, f, true);
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(&m, f, f->enum_type()->value(f->enum_type()->value_count() - 1));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        ASSERT_TRUE(f->is_repeated()) << f->full_name() << ": give it a test value";
        r->AddString(&m, f, "up_proj");
        r->AddString(&m, f, "q_proj");
        break;
      default:
        FAIL() << f->full_name() << ": a field of a kind this test does not fill";
    }
  }
}

v1::Job EveryFieldJob(v1::AdapterType adapter, const std::string& method = "supervised") {
  v1::Job job;
  job.set_model("lathe-demo");
  job.set_seed(1234);
  job.set_adapter(adapter);
  job.mutable_method()->set_type(method);
  SetEveryField(*MutableMethodHyperparameters(*job.mutable_method()),
                method == "dpo" || method == "spin" ? std::set<std::string>{}
                : method == "orpo" ? kDpoOnly
                                   : kPreference);
  job.mutable_reports()->set_general_file("file-general");
  job.mutable_reports()->set_all_tokens(true);
  job.mutable_reports()->set_intruder_top_k(5);
  job.mutable_reports()->set_intruder_epsilon(0.25);
  job.mutable_reports()->set_intruder_mitigation_lambda(0.375);
  if (method == std::string("prompt_tuning")) {
    job.set_adapter(v1::ADAPTER_TYPE_PROMPT_TUNING);
    auto* p = job.mutable_method()->mutable_prompt_tuning();
    p->set_num_virtual_tokens(13);
    p->set_init(v1::PROMPT_TUNING_INIT_TEXT);
    p->set_init_text("Answer briefly:");
    return job;
  }
  if (method == std::string("spin")) {
    v1::SpinMethod& s = *job.mutable_method()->mutable_spin();
    s.set_iterations(3);
    s.set_temperature(0.9);
    s.set_top_p(0.95);
    s.set_max_new_tokens(99);
    s.set_accumulate_previous(false);
  }
  if (method == std::string("rft")) {
    // Strings need names the engine knows: filled by hand, away from the
    // defaults.
    v1::RftMethod& r = *job.mutable_method()->mutable_rft();
    r.set_iterations(3);
    r.set_samples_per_prompt(7);
    r.set_temperature(0.9);
    r.set_top_p(0.95);
    r.set_max_new_tokens(99);
    r.set_answer_extractor("regex");
    r.set_answer_pattern("answer: (\\d+)");
    r.set_dedupe("exact");
    r.set_include_gold(false);
    r.set_init("base");
  }
  if (adapter == v1::ADAPTER_TYPE_LORA) SetEveryField(*job.mutable_lora());
  if (adapter == v1::ADAPTER_TYPE_S2FT) SetEveryField(*job.mutable_s2ft());
  // Not a valid selection (all kinds at once), but every field travels.
  if (adapter == v1::ADAPTER_TYPE_FULL) SetEveryField(*job.mutable_trainable());
  if (method != "supervised") return job;  // masked thought and mixtures are SFT's
  SetEveryField(*job.mutable_method()->mutable_supervised()->mutable_masked_thought());
  // Mixture holds messages and ids: filled by hand, every field away from
  // the engine's defaults.
  v1::Mixture& mixture = *job.mutable_training_mixture();
  mixture.set_strategy(v1::MIXTURE_STRATEGY_TEMPERATURE);
  mixture.set_stop(v1::MIXTURE_STOP_ALL_EXHAUSTED);
  mixture.set_temperature(2.5);
  for (int i = 0; i < 2; ++i) {
    v1::MixtureSource& s = *mixture.add_sources();
    s.set_file_id(i == 0 ? "file-a" : "file-b");
    s.set_name(i == 0 ? "math" : "general");
    s.set_validation_file_id(i == 0 ? "file-av" : "file-bv");
    s.set_weight(0.75);
    s.set_proportion(i == 0 ? 0 : 0.25);
    s.set_fraction(0.5);
  }
  // Not a valid job (a mixture and stages at once), but every field
  // travels.
  for (const char* name : {"specialised", "general"}) {
    v1::TrainingStage& stage = *job.add_stages();
    stage.set_name(name);
    stage.set_n_epochs(2);
    *stage.mutable_training_mixture() = mixture;
  }
  return job;
}

TEST(JobOptionsTest, EveryResolvedSettingReachesTheEngineAndBack) {
  for (const char* method : kMethodTypes) {
    for (v1::AdapterType adapter :
         {v1::ADAPTER_TYPE_LORA, v1::ADAPTER_TYPE_FULL, v1::ADAPTER_TYPE_S2FT}) {
      v1::Job job = EveryFieldJob(adapter, method);
      auto options = RunSpecForJob(job);
      ASSERT_TRUE(options.ok()) << options.status();
      v1::Job back = JobForRunSpec(*options);
      google::protobuf::util::MessageDifferencer diff;
      std::string report;
      diff.ReportDifferencesToString(&report);
      EXPECT_TRUE(diff.Compare(job, back))
          << method << " " << v1::AdapterType_Name(adapter) << ":\n" << report;
    }
  }
}

TEST(JobOptionsTest, ReportsReachTheJobAsTheEngineFoundThem) {
  engine::RunSpec spec;
  spec.evaluation.intruder_top_k = 10;
  spec.evaluation.intruder_epsilon = 0.5;
  engine::TrainResult result;
  EXPECT_FALSE(ReportForResult(spec, result).has_forgetting());
  EXPECT_FALSE(ReportForResult(spec, result).has_intruders());
  result.forgetting = engine::ForgettingReport{
      .loss_before = 2.0, .loss_after = 2.5, .tokens = 40, .tokens_counted = "all"};
  result.intruders = {{.name = "model.layers.0.self_attn.q_proj.weight",
                       .intruders = 2,
                       .min_similarity = 0.3},
                      {.name = "model.layers.0.self_attn.v_proj.weight",
                       .intruders = 1,
                       .min_similarity = 0.45}};
  const v1::JobReport report = ReportForResult(spec, result);
  EXPECT_EQ(report.forgetting().loss_before(), 2.0);
  EXPECT_EQ(report.forgetting().loss_after(), 2.5);
  EXPECT_EQ(report.forgetting().delta(), 0.5);
  EXPECT_DOUBLE_EQ(report.forgetting().ppl_ratio(), std::exp(0.5));
  EXPECT_EQ(report.forgetting().tokens(), 40);
  EXPECT_EQ(report.forgetting().tokens_counted(), "all");
  EXPECT_EQ(report.intruders().total(), 3);
  EXPECT_EQ(report.intruders().top_k(), 10);
  EXPECT_EQ(report.intruders().epsilon(), 0.5);
  ASSERT_EQ(report.intruders().matrices_size(), 2);
  EXPECT_EQ(report.intruders().matrices(1).min_similarity(), 0.45);
}

TEST(JobOptionsTest, AMergeJobBecomesItsMergeSpec) {
  v1::Job job;
  job.set_seed(77);
  job.mutable_method()->set_type("merge");
  v1::MergeMethod& m = *job.mutable_method()->mutable_merge();
  m.add_inputs("ft:a");
  m.add_inputs("ft:b");
  m.set_merge_method("dare_ties");
  m.add_weights(0.75);
  m.add_weights(0.25);
  m.set_lambda(0.5);
  m.set_density(0.3);
  m.set_majority_sign("frequency");
  m.set_beta(0.8);
  m.set_gamma(0.05);
  m.set_lines_alpha(0.4);
  m.set_lines_beta(0.6);
  auto spec = MergeSpecForJob(job);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->params.method, engine::MergeMethod::kDareTies);
  EXPECT_EQ(spec->params.weights, (std::vector<double>{0.75, 0.25}));
  EXPECT_EQ(spec->params.lambda, 0.5);
  EXPECT_EQ(spec->params.density, 0.3);
  EXPECT_EQ(spec->params.majority_sign, engine::MajoritySign::kFrequency);
  EXPECT_EQ(spec->params.beta, 0.8);
  EXPECT_EQ(spec->params.gamma, 0.05);
  EXPECT_EQ(spec->params.lines_alpha, 0.4);
  EXPECT_EQ(spec->params.lines_beta, 0.6);
  EXPECT_EQ(spec->params.seed, 77u);
  ASSERT_EQ(spec->inputs.size(), 2u);
  EXPECT_EQ(spec->inputs[1].name, "ft:b");
  m.set_merge_method("soup");
  EXPECT_NE(MergeSpecForJob(job).status().message().find("method.merge.merge_method"),
            std::string::npos);
}

TEST(JobOptionsTest, PreferenceMethodsGetTheirObjectives) {
  v1::Job job = EveryFieldJob(v1::ADAPTER_TYPE_LORA, "dpo");
  auto* hp = job.mutable_method()->mutable_dpo()->mutable_hyperparameters();
  hp->set_beta(0.25);
  hp->set_loss_type(v1::PREFERENCE_LOSS_ROBUST);
  hp->set_label_smoothing(0.1);
  auto o = RunSpecForJob(job);
  ASSERT_TRUE(o.ok()) << o.status();
  const auto* dpo = std::get_if<engine::DpoSpec>(&o->objective);
  ASSERT_NE(dpo, nullptr);
  EXPECT_EQ(dpo->beta, 0.25);
  EXPECT_EQ(dpo->loss_type, "robust");
  EXPECT_EQ(dpo->label_smoothing, 0.1);
  EXPECT_EQ(o->data.batch_size, hp->batch_size());
  hp->set_loss_type(v1::PREFERENCE_LOSS_UNSPECIFIED);
  EXPECT_EQ(RunSpecForJob(job).status().message().substr(0, 42),
            "method.dpo.hyperparameters.loss_type: PREF");
  v1::Job orpo = EveryFieldJob(v1::ADAPTER_TYPE_LORA, "orpo");
  orpo.mutable_method()->mutable_orpo()->mutable_hyperparameters()->set_beta(0.5);
  auto p = RunSpecForJob(orpo);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(std::holds_alternative<engine::OrpoSpec>(p->objective));
  EXPECT_EQ(std::get<engine::OrpoSpec>(p->objective).lambda, 0.5);
}

TEST(JobOptionsTest, TheValuesLandInTheirEngineFields) {
  v1::Job job = EveryFieldJob(v1::ADAPTER_TYPE_LORA);
  auto* hp = job.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_lr_scheduler(v1::LR_SCHEDULER_COSINE);
  hp->set_max_seq_len(384);
  hp->set_learning_rate(3e-4);
  job.mutable_lora()->set_rank(16);
  job.mutable_lora()->set_use_rslora(true);
  auto o = RunSpecForJob(job);
  ASSERT_TRUE(o.ok());
  ASSERT_NE(engine::Lora(o->adapter), nullptr);
  EXPECT_EQ(o->schedule.lr_scheduler, "cosine");
  EXPECT_EQ(o->data.max_seq_len, 384);
  EXPECT_DOUBLE_EQ(o->optimizer.learning_rate, 3e-4);
  EXPECT_EQ(engine::Lora(o->adapter)->rank, 16);
  EXPECT_TRUE(engine::Lora(o->adapter)->use_rslora);
  EXPECT_EQ(o->seed, 1234u);
  EXPECT_EQ(engine::ObjectiveType(o->objective), "sft");
  job.set_adapter(v1::ADAPTER_TYPE_FULL);
  EXPECT_EQ(engine::AdapterType(RunSpecForJob(job)->adapter), "full");
}

// The spec's side of totality: every field of the run spec is either set
// from the job (it differs from the engine default when every job field
// has a value of its own) or on this list, with the reason it is not.
const std::set<std::string> kNotFromTheJob = {
    // The agent's paths and the worker's device (attempt_setup.h).
    "model.dir", "data.training_file", "data.validation_file",
    "evaluation.general_file_name",
    // (The mixture's sources come from the job; the agent replaces their
    // file ids with the fetched paths.)
    "data.training_file_name", "data.validation_file_name", "checkpoint.dir",
    "checkpoint.resume_from", "output.dir", "output.merged_dir",
    "device.device",
    // Recognized from the base model's tokenizer_config.json: a job names
    // no template.
    "model.chat_template",
    // How a step is computed, not what it computes: the engine's choice
    // (the same loss and gradients either way; tests prove each).
    "data.packing", "objective.loss_chunk_tokens",
    "device.activation_checkpointing", "device.dtype",
    // The self-training recipe's own: each iteration ends in a checkpoint.
    "checkpoint.at_end", "objective.reference",
};

void CollectChanged(const nlohmann::json& now, const nlohmann::json& before,
                    const std::string& prefix, std::set<std::string>& changed,
                    std::set<std::string>& all) {
  for (const auto& [key, value] : now.items()) {
    const std::string name = prefix.empty() ? key : prefix + "." + key;
    if (value.is_object()) {
      CollectChanged(value, before.value(key, nlohmann::json::object()), name,
                     changed, all);
      continue;
    }
    if (key == "type") continue;  // the variant's tag
    // An optional nested section left unset; the other job sets it.
    if (value.is_null()) continue;
    all.insert(name);
    if (!before.contains(key) || before[key] != value) changed.insert(name);
  }
}

TEST(JobOptionsTest, EverySpecFieldComesFromTheJobOrIsListed) {
  std::set<std::string> changed, all;
  // LoRA's fields from LoRA jobs, the trainable selection from a full one.
  std::vector<v1::Job> jobs = {EveryFieldJob(v1::ADAPTER_TYPE_FULL)};
  for (const char* method : kMethodTypes) {
    jobs.push_back(EveryFieldJob(v1::ADAPTER_TYPE_LORA, method));
  }
  for (const v1::Job& job : jobs) {
    auto spec = RunSpecForJob(job);
    ASSERT_TRUE(spec.ok()) << spec.status();
    // The defaults of the same objective.
    engine::RunSpec defaults;
    defaults.objective = std::visit(
        [](const auto& o) -> engine::ObjectiveSpec { return std::decay_t<decltype(o)>{}; },
        spec->objective);
    CollectChanged(engine::RunSpecJson(*spec), engine::RunSpecJson(defaults), "",
                   changed, all);
  }
  for (const std::string& field : all) {
    EXPECT_TRUE(changed.count(field) || kNotFromTheJob.count(field))
        << field << " is neither set from the job nor listed in kNotFromTheJob";
    EXPECT_FALSE(changed.count(field) && kNotFromTheJob.count(field))
        << field << " is set from the job: take it off kNotFromTheJob";
  }
}

TEST(JobOptionsTest, UnresolvedValuesAreRefusedByName) {
  v1::Job job = EveryFieldJob(v1::ADAPTER_TYPE_LORA);
  job.set_adapter(v1::ADAPTER_TYPE_UNSPECIFIED);
  EXPECT_EQ(RunSpecForJob(job).status().message().substr(0, 8), "adapter:");
  job.set_adapter(v1::ADAPTER_TYPE_LORA);
  job.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_lr_scheduler(
      v1::LR_SCHEDULER_UNSPECIFIED);
  EXPECT_TRUE(absl::IsInvalidArgument(RunSpecForJob(job).status()));
}

}  // namespace
}  // namespace lathe::worker
