#include "server/job_request.h"

#include <cmath>
#include <cstring>
#include <set>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "common/job_method.h"
#include "google/protobuf/descriptor.h"

namespace lathe {
namespace {

// Hyperparameters only the preference methods take.
const std::set<std::string> kPreferenceOnly = {"beta", "label_smoothing", "rpo_alpha",
                                               "max_prompt_len"};

v1::CreateJobRequest Valid() {
  v1::CreateJobRequest r;
  r.set_model("tiny");
  r.set_training_file("file-1");
  return r;
}

TEST(JobRequestTest, RefusesBadFieldsByName) {
  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* field;
  };
  auto hp = [](v1::CreateJobRequest& r) {
    return r.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  };
  const Case cases[] = {
      {[](auto& r) { r.clear_model(); }, "model: required"},
      {[](auto& r) { r.clear_training_file(); }, "training_file: required"},
      {[](auto& r) { r.mutable_method()->set_type("kto"); }, "method.type"},
      // Preference settings on a supervised job.
      {[&](auto& r) { hp(r)->set_beta(0.1); },
       "method.supervised.hyperparameters.beta: is for method.type \"dpo\" or \"orpo\""},
      {[&](auto& r) { hp(r)->set_rpo_alpha(1); },
       "method.supervised.hyperparameters.rpo_alpha: is for method.type \"dpo\""},
      {[&](auto& r) { hp(r)->set_n_epochs(0); }, "hyperparameters.n_epochs"},
      {[&](auto& r) { hp(r)->set_batch_size(100000); }, "hyperparameters.batch_size"},
      {[&](auto& r) { hp(r)->set_learning_rate_multiplier(NAN); },
       "learning_rate_multiplier"},
      {[&](auto& r) { hp(r)->set_learning_rate_multiplier(-1); },
       "learning_rate_multiplier"},
      {[](auto& r) { r.mutable_lora()->set_rank(0); }, "lora.rank"},
      {[](auto& r) { r.mutable_lora()->set_alpha(INFINITY); }, "lora.alpha"},
      {[](auto& r) { r.mutable_lora()->set_dropout(1.0); }, "lora.dropout"},
      {[](auto& r) { r.mutable_lora()->add_target_modules("lm_head"); },
       "lora.target_modules[0]"},
      {[](auto& r) { r.mutable_lora()->set_alpha(1e308); }, "lora.alpha"},
      {[](auto& r) {
         r.mutable_lora()->add_target_modules("q_proj");
         r.mutable_lora()->add_target_modules("v_proj");
         r.mutable_lora()->add_target_modules("q_proj");
       },
       "lora.target_modules[2]: \"q_proj\" is already lora.target_modules[0]"},
      {[](auto& r) { r.set_model(std::string(100'000, 'm')); },
       "model: longer than 128 bytes"},
      {[](auto& r) { r.set_training_file("file-\x1b[2J"); }, "training_file"},
      {[](auto& r) { r.set_validation_file(std::string(200, 'v')); },
       "validation_file"},
      {[&](auto& r) { hp(r)->set_warmup_steps(-1); }, "hyperparameters.warmup_steps"},
      {[&](auto& r) { hp(r)->set_gradient_accumulation_steps(0); },
       "hyperparameters.gradient_accumulation_steps"},
      {[&](auto& r) { hp(r)->set_max_seq_len(4); }, "hyperparameters.max_seq_len"},
      {[&](auto& r) { hp(r)->set_eval_every_steps(-3); }, "hyperparameters.eval_every_steps"},
      {[&](auto& r) { hp(r)->set_checkpoint_every_steps(-1); },
       "hyperparameters.checkpoint_every_steps"},
      {[&](auto& r) { hp(r)->set_weight_decay(NAN); }, "hyperparameters.weight_decay"},
      {[&](auto& r) { hp(r)->set_max_grad_norm(0); }, "hyperparameters.max_grad_norm"},
      {[&](auto& r) { hp(r)->set_lr_scheduler(static_cast<v1::LrScheduler>(9)); },
       "hyperparameters.lr_scheduler"},
      {[&](auto& r) { hp(r)->set_learning_rate(0.1); }, "hyperparameters.learning_rate: output only"},
      {[](auto& r) { r.set_adapter(static_cast<v1::AdapterType>(7)); }, "adapter"},
      {[](auto& r) { r.set_suffix("../etc"); }, "suffix"},
      {[](auto& r) {
         for (int i = 0; i < 17; ++i) (*r.mutable_metadata())["k" + std::to_string(i)] = "v";
       },
       "metadata"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = Valid();
    c.mutate(r);
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  EXPECT_TRUE(CheckJobRequest(Valid()).ok());
}

// A mixture job: two weighted sources and a regulariser.
v1::CreateJobRequest Mixed() {
  v1::CreateJobRequest r = Valid();
  r.clear_training_file();
  auto* m = r.mutable_training_mixture();
  for (const char* id : {"file-a", "file-b", "file-g"}) m->add_sources()->set_file_id(id);
  m->mutable_sources(0)->set_weight(0.7);
  m->mutable_sources(1)->set_weight(0.3);
  m->mutable_sources(2)->set_proportion(0.1);
  r.mutable_method()->mutable_supervised()->mutable_masked_thought();
  return r;
}

// A DMT job: stage 1 on two specialised files, stage 2 on the general
// file plus a quarter of each.
v1::CreateJobRequest Dmt() {
  v1::CreateJobRequest r = Valid();
  r.clear_training_file();
  v1::TrainingStage* first = r.add_stages();
  first->set_name("specialised");
  for (const char* id : {"file-a", "file-b"}) {
    first->mutable_training_mixture()->add_sources()->set_file_id(id);
  }
  v1::TrainingStage* second = r.add_stages();
  second->mutable_training_mixture()->add_sources()->set_file_id("file-g");
  for (const char* id : {"file-a", "file-b"}) {
    auto* s = second->mutable_training_mixture()->add_sources();
    s->set_file_id(id);
    s->set_fraction(0.25);
  }
  second->set_n_epochs(2);
  return r;
}

// A merge job: its inputs and parameters are checked by field, nothing of
// training may be set, and its settings resolve.
TEST(JobRequestTest, MergeJobsAreCheckedAndResolved) {
  auto merge = [] {
    v1::CreateJobRequest r;
    r.set_model("lathe-demo");
    r.mutable_method()->set_type("merge");
    for (const char* id : {"ft:lathe-demo:a", "ft:lathe-demo:b"}) {
      r.mutable_method()->mutable_merge()->add_inputs(id);
    }
    return r;
  };
  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* field;
  };
  auto m = [](v1::CreateJobRequest& r) { return r.mutable_method()->mutable_merge(); };
  const Case cases[] = {
      {[&](auto& r) { m(r)->mutable_inputs()->RemoveLast(); }, "method.merge.inputs: 1 inputs"},
      {[&](auto& r) { m(r)->set_inputs(1, "ft:lathe-demo:a"); },
       "method.merge.inputs[1]: ft:lathe-demo:a is already inputs[0]"},
      {[&](auto& r) { m(r)->set_merge_method("average"); }, "method.merge.merge_method"},
      {[&](auto& r) { m(r)->add_weights(1); }, "method.merge.weights: 1 weights for 2"},
      {[&](auto& r) {
         m(r)->add_weights(1);
         m(r)->add_weights(0);
       },
       "method.merge.weights[1]"},
      {[&](auto& r) { m(r)->set_density(0); }, "method.merge.density"},
      {[&](auto& r) { m(r)->set_gamma(1.5); }, "method.merge.gamma"},
      {[&](auto& r) { m(r)->set_majority_sign("mass"); }, "method.merge.majority_sign"},
      {[&](auto& r) { m(r)->set_merge_method("greedy_soup"); }, "validation_file: greedy_soup"},
      {[](auto& r) { r.set_training_file("file-a"); }, "training_file: is for training jobs"},
      {[](auto& r) { r.mutable_lora()->set_rank(4); }, "lora: is for training jobs"},
      {[](auto& r) { r.mutable_method()->mutable_supervised(); }, "method.supervised"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = merge();
    c.mutate(r);
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  ASSERT_TRUE(CheckJobRequest(merge()).ok()) << CheckJobRequest(merge());
  v1::Model model;
  model.set_parameter_count(1000);
  const v1::Job job = ResolveJob(merge(), v1::File(), model, "p", "ftjob-1", 5, {});
  EXPECT_EQ(job.method().type(), "merge");
  EXPECT_FALSE(job.method().has_supervised());
  const v1::MergeMethod& resolved = job.method().merge();
  EXPECT_EQ(resolved.merge_method(), "linear");
  EXPECT_EQ(resolved.weights_size(), 2);
  EXPECT_EQ(resolved.density(), 1);
  EXPECT_EQ(resolved.majority_sign(), "total");
  EXPECT_EQ(job.adapter(), v1::ADAPTER_TYPE_FULL);
  EXPECT_EQ(job.memory_bytes(), 0);
  v1::CreateJobRequest soup = merge();
  soup.mutable_method()->mutable_merge()->set_merge_method("greedy_soup");
  soup.set_validation_file("file-v");
  ASSERT_TRUE(CheckJobRequest(soup).ok()) << CheckJobRequest(soup);
  const v1::Job soup_job = ResolveJob(soup, v1::File(), model, "p", "ftjob-2", 5, {});
  EXPECT_EQ(soup_job.method().merge().weights_size(), 0);
  EXPECT_EQ(soup_job.memory_bytes(), 4000);  // a float32 model to score
}

TEST(JobRequestTest, AnalysisJobsAreCheckedAndResolved) {
  auto analyze = [] {
    v1::CreateJobRequest r;
    r.set_model("lathe-demo");
    r.set_training_file("file-a");
    r.mutable_method()->set_type("analyze");
    return r;
  };
  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* field;
  };
  auto a = [](v1::CreateJobRequest& r) { return r.mutable_method()->mutable_analyze(); };
  const Case cases[] = {
      {[](auto& r) { r.clear_training_file(); }, "training_file"},
      {[&](auto& r) { a(r)->set_max_seq_len(1); }, "method.analyze.max_seq_len"},
      {[&](auto& r) { a(r)->set_loss_quantile_high(1.5); }, "method.analyze.loss_quantile_high"},
      {[&](auto& r) {
         a(r)->set_loss_quantile_low(0.5);
         a(r)->set_loss_quantile_high(0.5);
       },
       "method.analyze.loss_quantile_low"},
      {[](auto& r) { r.mutable_lora()->set_rank(2); }, "lora: is for training jobs"},
      {[](auto& r) { r.mutable_method()->mutable_merge(); }, "method.merge"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = analyze();
    c.mutate(r);
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  ASSERT_TRUE(CheckJobRequest(analyze()).ok()) << CheckJobRequest(analyze());
  v1::Model model;
  model.set_parameter_count(1000);
  const v1::Job job = ResolveJob(analyze(), v1::File(), model, "p", "ftjob-1", 5, {});
  EXPECT_EQ(job.method().type(), "analyze");
  EXPECT_EQ(job.training_file(), "file-a");
  EXPECT_EQ(job.method().analyze().max_seq_len(), 512);
  EXPECT_EQ(job.method().analyze().loss_quantile_high(), 1);
  EXPECT_FALSE(job.method().has_supervised());
  EXPECT_EQ(job.memory_bytes(), 4000);
}

TEST(JobRequestTest, GotDAndClearSelectionsAreCheckedAndResolved) {
  auto analyze = [](v1::AnalyzeSelection selection) {
    v1::CreateJobRequest r;
    r.set_model("lathe-demo");
    r.set_training_file("file-a");
    r.mutable_method()->set_type("analyze");
    r.mutable_method()->mutable_analyze()->set_selection(selection);
    if (selection == v1::ANALYZE_SELECTION_GOT_D) {
      r.mutable_method()->mutable_analyze()->mutable_got_d()->set_target_file("file-t");
      r.mutable_method()->mutable_analyze()->mutable_got_d()->set_budget(10);
    }
    return r;
  };
  struct Case {
    v1::AnalyzeSelection selection;
    std::function<void(v1::AnalyzeMethod&)> mutate;
    const char* field;
  };
  const auto kGotD = v1::ANALYZE_SELECTION_GOT_D, kClear = v1::ANALYZE_SELECTION_CLEAR;
  const Case cases[] = {
      {kGotD, [](auto& a) { a.mutable_got_d()->clear_target_file(); },
       "method.analyze.got_d.target_file"},
      {kGotD, [](auto& a) { a.mutable_got_d()->clear_budget(); }, "method.analyze.got_d.budget"},
      {kGotD, [](auto& a) { a.mutable_got_d()->set_budget(0); }, "method.analyze.got_d.budget"},
      {kGotD, [](auto& a) { a.mutable_got_d()->set_epsilon_fraction(0); },
       "method.analyze.got_d.epsilon_fraction"},
      {kGotD, [](auto& a) { a.set_loss_quantile_low(0.1); }, "method.analyze.loss_quantile_low"},
      {kGotD, [](auto& a) { a.mutable_clear()->set_alpha(0.5); }, "method.analyze.clear"},
      {kClear, [](auto& a) { a.mutable_got_d()->set_budget(3); }, "method.analyze.got_d"},
      {kClear, [](auto& a) { a.mutable_clear()->set_alpha(1.5); }, "method.analyze.clear.alpha"},
      {kClear, [](auto& a) { a.mutable_clear()->set_drop_fraction(1); },
       "method.analyze.clear.drop_fraction"},
      {kClear, [](auto& a) { a.mutable_clear()->set_samples(0); }, "method.analyze.clear.samples"},
      {kClear, [](auto& a) { a.mutable_clear()->set_temperature(-1); },
       "method.analyze.clear.temperature"},
      {kClear, [](auto& a) { a.mutable_clear()->set_max_new_tokens(0); },
       "method.analyze.clear.max_new_tokens"},
      {kClear, [](auto& a) { a.mutable_clear()->set_threshold(NAN); },
       "method.analyze.clear.threshold"},
      {kClear, [](auto& a) { a.mutable_clear()->set_score(static_cast<v1::ClearScore>(9)); },
       "method.analyze.clear.score"},
      {kClear, [](auto& a) { a.mutable_clear()->set_answer_extractor("vibes"); },
       "method.analyze.clear.answer_extractor"},
      {kClear, [](auto& a) { a.mutable_clear()->set_answer_pattern("x"); },
       "method.analyze.clear.answer_pattern"},
      {kClear, [](auto& a) { a.set_batch_size(0); }, "method.analyze.batch_size"},
      {kClear, [](auto& a) { a.set_selection(static_cast<v1::AnalyzeSelection>(7)); },
       "method.analyze.selection"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = analyze(c.selection);
    c.mutate(*r.mutable_method()->mutable_analyze());
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  v1::Model model;
  model.set_parameter_count(1000);
  ASSERT_TRUE(CheckJobRequest(analyze(kGotD)).ok()) << CheckJobRequest(analyze(kGotD));
  v1::Job job = ResolveJob(analyze(kGotD), v1::File(), model, "p", "ftjob-1", 5, {});
  const v1::AnalyzeMethod& g = job.method().analyze();
  EXPECT_EQ(g.selection(), kGotD);
  EXPECT_EQ(g.got_d().target_file(), "file-t");
  EXPECT_EQ(g.got_d().budget(), 10);
  EXPECT_EQ(g.got_d().epsilon_fraction(), 0.1);
  EXPECT_EQ(g.batch_size(), 8);
  EXPECT_FALSE(g.has_clear());

  ASSERT_TRUE(CheckJobRequest(analyze(kClear)).ok()) << CheckJobRequest(analyze(kClear));
  job = ResolveJob(analyze(kClear), v1::File(), model, "p", "ftjob-2", 5, {});
  const v1::ClearSelection& c = job.method().analyze().clear();
  EXPECT_EQ(c.score(), v1::CLEAR_SCORE_CONFIDENCE);
  EXPECT_EQ(c.alpha(), 0.7);
  EXPECT_EQ(c.samples(), 5);
  EXPECT_EQ(c.temperature(), 1);
  EXPECT_EQ(c.max_new_tokens(), 256);
  EXPECT_EQ(c.drop_fraction(), 0);
  EXPECT_FALSE(c.has_threshold());
  EXPECT_EQ(job.seed(), 5);
  // Unspecified is the loss quantiles.
  job = ResolveJob(analyze(v1::ANALYZE_SELECTION_UNSPECIFIED), v1::File(), model, "p", "ftjob-3",
                   5, {});
  EXPECT_EQ(job.method().analyze().selection(), v1::ANALYZE_SELECTION_LOSS_QUANTILE);
}

TEST(JobRequestTest, ReportsAreCheckedAndResolved) {
  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* field;
  };
  const Case cases[] = {
      {[](auto& r) { r.mutable_reports()->set_general_file("bad id"); }, "reports.general_file"},
      {[](auto& r) { r.mutable_reports()->set_intruder_top_k(65); }, "reports.intruder_top_k"},
      {[](auto& r) { r.mutable_reports()->set_intruder_top_k(-1); }, "reports.intruder_top_k"},
      {[](auto& r) {
         r.set_adapter(v1::ADAPTER_TYPE_FULL);
         r.mutable_reports()->set_intruder_top_k(4);
       },
       "reports.intruder_top_k: is for LoRA jobs"},
      {[](auto& r) { r.mutable_reports()->set_intruder_epsilon(0); }, "reports.intruder_epsilon"},
      {[](auto& r) { r.mutable_reports()->set_intruder_epsilon(NAN); },
       "reports.intruder_epsilon"},
      {[](auto& r) { r.mutable_reports()->set_intruder_mitigation_lambda(1.5); },
       "reports.intruder_mitigation_lambda: must be in [0, 1]"},
      {[](auto& r) {
         r.set_adapter(v1::ADAPTER_TYPE_FULL);
         r.mutable_reports()->set_intruder_mitigation_lambda(0.75);
       },
       "reports.intruder_mitigation_lambda: is for LoRA jobs"},
      {[](auto& r) {
         r.mutable_lora()->set_use_dora(true);
         r.mutable_reports()->set_intruder_mitigation_lambda(0.75);
       },
       "reports.intruder_mitigation_lambda: is for LoRA without DoRA"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = Valid();
    c.mutate(r);
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  v1::File training;
  training.set_line_count(40);
  v1::CreateJobRequest r = Valid();
  r.mutable_reports()->set_general_file("file-g");
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  v1::Job job = ResolveJob(r, training, v1::Model(), "p", "ftjob-1", 5, {});
  EXPECT_EQ(job.reports().general_file(), "file-g");
  EXPECT_FALSE(job.reports().all_tokens());
  EXPECT_EQ(job.reports().intruder_top_k(), 10);  // LoRA
  EXPECT_EQ(job.reports().intruder_epsilon(), 0.5);
  EXPECT_FALSE(job.reports().has_intruder_mitigation_lambda());  // off unless asked
  r.mutable_reports()->set_intruder_mitigation_lambda(0);
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  EXPECT_EQ(ResolveJob(r, training, v1::Model(), "p", "ftjob-1", 5, {})
                .reports()
                .intruder_mitigation_lambda(),
            0);
  r.mutable_reports()->clear_intruder_mitigation_lambda();
  r.set_adapter(v1::ADAPTER_TYPE_FULL);
  job = ResolveJob(r, training, v1::Model(), "p", "ftjob-2", 5, {});
  EXPECT_EQ(job.reports().intruder_top_k(), 0);  // no adapted matrices
}

TEST(JobRequestTest, StagesAreCheckedByNameAndResolved) {
  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* field;
  };
  auto source = [](v1::CreateJobRequest& r, int stage, int i) {
    return r.mutable_stages(stage)->mutable_training_mixture()->mutable_sources(i);
  };
  const Case cases[] = {
      {[&](auto& r) { source(r, 1, 1)->set_fraction(0); },
       "stages[1].training_mixture.sources[1].fraction"},
      {[&](auto& r) { source(r, 1, 0)->set_weight(-1); },
       "stages[1].training_mixture.sources[0].weight"},
      {[&](auto& r) { source(r, 0, 1)->set_file_id("file-a"); },
       "stages[0].training_mixture.sources[1].name"},
      {[](auto& r) { r.mutable_stages(1)->mutable_training_mixture()->clear_sources(); },
       "stages[1].training_mixture.sources: must not be empty"},
      {[](auto& r) { r.mutable_stages(1)->set_n_epochs(0); }, "stages[1].n_epochs"},
      {[](auto& r) { r.mutable_stages(1)->set_name("specialised"); },
       "stages[1].name: \"specialised\" is already stages[0]'s name"},
      {[](auto& r) { r.mutable_stages(0)->set_name("a b"); }, "stages[0].name"},
      {[](auto& r) { r.mutable_training_mixture()->add_sources()->set_file_id("file-x"); },
       "training_mixture: leave it unset with stages"},
      {[](auto& r) { r.set_training_file("file-x"); }, "training_file: leave it empty with stages"},
      {[](auto& r) {
         for (int i = 0; i < 7; ++i) *r.add_stages() = r.stages(0);
       },
       "stages: at most 8"},
      {[](auto& r) { r.mutable_method()->set_type("dpo"); },
       "stages: is for method.type \"supervised\""},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = Dmt();
    c.mutate(r);
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  ASSERT_TRUE(CheckJobRequest(Dmt()).ok()) << CheckJobRequest(Dmt());
  v1::CreateJobRequest first = Dmt();
  first.set_training_file("file-a");
  EXPECT_TRUE(CheckJobRequest(first).ok());

  v1::File training;
  training.set_line_count(40);
  const v1::Job job = ResolveJob(Dmt(), training, v1::Model(), "p", "ftjob-1", 5, {});
  EXPECT_EQ(job.training_file(), "file-a");
  EXPECT_FALSE(job.has_training_mixture());
  ASSERT_EQ(job.stages_size(), 2);
  EXPECT_EQ(job.stages(0).name(), "specialised");
  EXPECT_EQ(job.stages(1).name(), "stage-2");
  EXPECT_EQ(job.stages(0).n_epochs(), 3);  // the method's
  EXPECT_EQ(job.stages(1).n_epochs(), 2);
  const v1::Mixture& m = job.stages(1).training_mixture();
  EXPECT_EQ(m.strategy(), v1::MIXTURE_STRATEGY_CONCAT);
  EXPECT_EQ(m.stop(), v1::MIXTURE_STOP_FIRST_EXHAUSTED);
  EXPECT_EQ(m.sources(0).name(), "file-g");
  EXPECT_EQ(m.sources(0).fraction(), 1);
  EXPECT_EQ(m.sources(2).fraction(), 0.25);
  EXPECT_EQ(job.stages(0).training_mixture().sources(1).weight(), 1);
}

TEST(JobRequestTest, RefusesBadMixturesAndMaskedThoughtByName) {
  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* field;
  };
  auto source = [](v1::CreateJobRequest& r, int i) {
    return r.mutable_training_mixture()->mutable_sources(i);
  };
  auto mt = [](v1::CreateJobRequest& r) {
    return r.mutable_method()->mutable_supervised()->mutable_masked_thought();
  };
  const Case cases[] = {
      {[&](auto& r) { source(r, 1)->set_weight(0); }, "training_mixture.sources[1].weight"},
      {[&](auto& r) { source(r, 1)->set_weight(NAN); }, "training_mixture.sources[1].weight"},
      {[&](auto& r) { source(r, 2)->set_proportion(1); },
       "training_mixture.sources[2].proportion"},
      {[&](auto& r) { source(r, 0)->set_fraction(0); }, "training_mixture.sources[0].fraction"},
      {[&](auto& r) { source(r, 1)->clear_file_id(); }, "training_mixture.sources[1].file_id"},
      {[&](auto& r) { source(r, 1)->set_name("a/b"); }, "training_mixture.sources[1].name"},
      {[&](auto& r) { source(r, 1)->set_file_id("file-a"); },
       "training_mixture.sources[1].name: \"file-a\" is already sources[0]'s name"},
      {[&](auto& r) {
         source(r, 0)->set_proportion(0.5);
         source(r, 1)->set_proportion(0.5);
       },
       "training_mixture.sources: need one source"},
      {[](auto& r) { r.set_training_file("file-x"); }, "training_file: leave it empty"},
      {[](auto& r) { r.mutable_training_mixture()->set_temperature(0); },
       "training_mixture.temperature"},
      {[](auto& r) { r.mutable_training_mixture()->set_stop(static_cast<v1::MixtureStop>(9)); },
       "training_mixture.stop"},
      {[](auto& r) { r.mutable_training_mixture()->clear_sources(); },
       "training_mixture.sources: must not be empty"},
      {[&](auto& r) { mt(r)->set_mask_rate(1.5); }, "masked_thought.mask_rate"},
      {[&](auto& r) { mt(r)->set_warmup_ratio(0); }, "masked_thought.warmup_ratio"},
      {[&](auto& r) { mt(r)->set_mask_token_id(-1); }, "masked_thought.mask_token_id"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = Mixed();
    c.mutate(r);
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  ASSERT_TRUE(CheckJobRequest(Mixed()).ok()) << CheckJobRequest(Mixed());
  v1::CreateJobRequest first = Mixed();
  first.set_training_file("file-a");  // the first source may be named twice
  EXPECT_TRUE(CheckJobRequest(first).ok());

  v1::File training;
  training.set_line_count(40);
  const v1::Job job = ResolveJob(Mixed(), training, v1::Model(), "p", "ftjob-1", 5, {});
  EXPECT_EQ(job.training_file(), "file-a");
  const v1::Mixture& m = job.training_mixture();
  EXPECT_EQ(m.strategy(), v1::MIXTURE_STRATEGY_WEIGHTED);
  EXPECT_EQ(m.stop(), v1::MIXTURE_STOP_FIRST_EXHAUSTED);
  EXPECT_EQ(m.temperature(), 1);
  EXPECT_EQ(m.sources(2).name(), "file-g");
  EXPECT_EQ(m.sources(2).weight(), 1);
  EXPECT_EQ(m.sources(2).proportion(), 0.1);
  EXPECT_EQ(m.sources(0).fraction(), 1);
  const v1::MaskedThought& resolved = job.method().supervised().masked_thought();
  EXPECT_EQ(resolved.mask_rate(), 0.2);
  EXPECT_EQ(resolved.schedule(), v1::MASK_RATE_SCHEDULE_LINEAR_WARMUP);
  EXPECT_NEAR(resolved.warmup_ratio(), 2.0 / 3, 1e-12);
  EXPECT_FALSE(resolved.has_mask_token_id());  // the pad token
  EXPECT_FALSE(ResolveJob(Valid(), training, v1::Model(), "p", "ftjob-2", 5, {})
                   .method()
                   .supervised()
                   .has_masked_thought());
}

TEST(JobRequestTest, ResolvesAutoAndKeepsGivenValues) {
  v1::File f;
  f.set_line_count(100);
  v1::CreateJobRequest r = Valid();
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  v1::Job auto_job = ResolveJob(r, f, model, "proj-a", "ftjob-1", 7, JobDefaults{});
  const auto& hp = auto_job.method().supervised().hyperparameters();
  EXPECT_EQ(auto_job.method().type(), "supervised");
  EXPECT_EQ(hp.n_epochs(), 3);
  EXPECT_EQ(hp.batch_size(), 5);
  EXPECT_EQ(hp.learning_rate_multiplier(), 1);
  EXPECT_EQ(auto_job.lora().rank(), 8);
  EXPECT_EQ(auto_job.lora().alpha(), 16);
  EXPECT_EQ(auto_job.lora().target_modules_size(), 4);
  EXPECT_FALSE(auto_job.lora().use_rslora());
  EXPECT_EQ(auto_job.adapter(), v1::ADAPTER_TYPE_LORA);
  // Every setting the engine needs is resolved, so the job shows what runs.
  EXPECT_DOUBLE_EQ(hp.learning_rate(), 2e-4);
  EXPECT_EQ(hp.warmup_steps(), 0);
  EXPECT_EQ(hp.lr_scheduler(), v1::LR_SCHEDULER_LINEAR);
  EXPECT_EQ(hp.weight_decay(), 0);
  EXPECT_EQ(hp.gradient_accumulation_steps(), 1);
  EXPECT_EQ(hp.max_seq_len(), 512);
  EXPECT_EQ(hp.eval_every_steps(), 0);
  EXPECT_EQ(hp.max_grad_norm(), 1);
  EXPECT_EQ(hp.checkpoint_every_steps(), 100);
  // Every optional field of the hyperparameters and LoRA settings is set:
  // a field added to the proto but not to resolution fails here.
  for (const google::protobuf::Message* m :
       {static_cast<const google::protobuf::Message*>(&hp),
        static_cast<const google::protobuf::Message*>(&auto_job.lora())}) {
    const google::protobuf::Descriptor* d = m->GetDescriptor();
    for (int i = 0; i < d->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* fd = d->field(i);
      // (The preference settings are dpo's and orpo's: resolved there, see
      // ResolvesPreferenceDefaultsAndChecksTheFilesFormat.)
      if (fd->has_presence() && !kPreferenceOnly.count(fd->name())) {
        EXPECT_TRUE(m->GetReflection()->HasField(*m, fd)) << fd->full_name() << " not resolved";
      }
    }
  }
  EXPECT_EQ(auto_job.seed(), 7);
  EXPECT_EQ(auto_job.status(), v1::JOB_STATUS_VALIDATING_FILES);
  EXPECT_EQ(auto_job.project(), "proj-a");
  EXPECT_EQ(auto_job.priority(), v1::JOB_PRIORITY_NORMAL);
  // At least the weights and the fixed overhead.
  EXPECT_GT(auto_job.memory_bytes(), (1LL << 30) + 2'000'000);

  r.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(1);
  r.mutable_lora()->set_rank(4);
  r.set_seed(42);
  r.set_priority(v1::JOB_PRIORITY_HIGH);
  v1::Job given = ResolveJob(r, f, model, "proj-a", "ftjob-2", 7, JobDefaults{});
  EXPECT_EQ(given.priority(), v1::JOB_PRIORITY_HIGH);
  EXPECT_EQ(given.method().supervised().hyperparameters().n_epochs(), 1);
  EXPECT_EQ(given.lora().rank(), 4);
  EXPECT_EQ(given.lora().alpha(), 8);
  EXPECT_EQ(given.seed(), 42);
}

TEST(JobRequestTest, FullFineTuningAndTheOperatorsDefaults) {
  v1::File f;
  f.set_line_count(10);
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  v1::CreateJobRequest r = Valid();
  auto* hp = r.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_learning_rate_multiplier(0.5);
  hp->set_max_seq_len(1024);
  hp->set_lr_scheduler(v1::LR_SCHEDULER_COSINE);
  v1::Job lora = ResolveJob(r, f, model, "p", "ftjob-l", 1, JobDefaults{});
  r.set_adapter(v1::ADAPTER_TYPE_FULL);
  JobDefaults defaults{.base_learning_rate = 1e-5, .checkpoint_every_steps = 7};
  v1::Job full = ResolveJob(r, f, model, "p", "ftjob-f", 1, defaults);
  EXPECT_EQ(full.adapter(), v1::ADAPTER_TYPE_FULL);
  EXPECT_FALSE(full.has_lora());
  const auto& fhp = full.method().supervised().hyperparameters();
  EXPECT_DOUBLE_EQ(fhp.learning_rate(), 0.5e-5);
  EXPECT_EQ(fhp.checkpoint_every_steps(), 7);
  EXPECT_EQ(fhp.max_seq_len(), 1024);
  EXPECT_EQ(fhp.lr_scheduler(), v1::LR_SCHEDULER_COSINE);
  // Full fine-tuning keeps optimizer state for every weight.
  EXPECT_GT(full.memory_bytes(), lora.memory_bytes());
  // LoRA settings with full fine-tuning are refused.
  r.mutable_lora()->set_rank(4);
  absl::Status st = CheckJobRequest(r);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_EQ(st.message().substr(0, 6), "lora: ");
}

// Layer selection, LISA and HFT are for full fine-tuning; each is checked
// by name, alone, and against the model's layer count.
TEST(JobRequestTest, TrainableSelectionIsCheckedAndResolved) {
  v1::CreateJobRequest lisa = Valid();
  lisa.mutable_trainable()->mutable_lisa();
  absl::Status st = CheckJobRequest(lisa);  // adapter auto = LoRA
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_EQ(st.message().substr(0, 16), "trainable.lisa: ") << st;
  v1::CreateJobRequest hft = Valid();
  hft.set_adapter(v1::ADAPTER_TYPE_LORA);
  hft.mutable_trainable()->mutable_half_ft();
  EXPECT_EQ(CheckJobRequest(hft).message().substr(0, 19),
            "trainable.half_ft: ");

  struct Case {
    std::function<void(v1::Trainable&)> mutate;
    const char* field;
  };
  const Case cases[] = {
      {[](auto& t) { t.add_layers("2-x"); }, "trainable.layers[0]"},
      {[](auto& t) { t.add_modules("lm_head"); }, "trainable.modules[0]"},
      {[](auto& t) {
         t.add_modules("mlp");
         t.add_modules("mlp");
       },
       "trainable.modules[1]"},
      {[](auto& t) { t.mutable_lisa()->set_activated_layers(0); },
       "trainable.lisa.activated_layers"},
      {[](auto& t) { t.mutable_lisa()->set_interval_steps(0); },
       "trainable.lisa.interval_steps"},
      {[](auto& t) {
         t.mutable_lisa();
         t.add_layers("1");
       },
       "trainable.lisa: "},
      {[](auto& t) {
         t.mutable_half_ft();
         t.add_modules("mlp");
       },
       "trainable.half_ft: "},
      {[](auto& t) {
         t.mutable_half_ft()->set_reselect(static_cast<v1::HalfFtReselect>(9));
       },
       "trainable.half_ft.reselect"},
      {[](auto& t) { t.mutable_half_ft()->set_fraction(0); },
       "trainable.half_ft.fraction: 0 is not in (0, 1]"},
      {[](auto& t) { t.mutable_half_ft()->set_fraction(1.25); },
       "trainable.half_ft.fraction"},
      {[](auto& t) { t.mutable_half_ft()->set_fraction(NAN); },
       "trainable.half_ft.fraction"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = Valid();
    r.set_adapter(v1::ADAPTER_TYPE_FULL);
    c.mutate(*r.mutable_trainable());
    absl::Status status = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.field;
    EXPECT_NE(status.message().find(c.field), absl::string_view::npos)
        << status.message() << " should name " << c.field;
  }
  v1::CreateJobRequest dora = Valid();
  dora.mutable_lora()->set_use_dora(true);
  dora.mutable_lora()->add_layers_to_transform(1);
  dora.mutable_lora()->add_layers_to_transform(1);
  EXPECT_NE(CheckJobRequest(dora).message().find("lora.layers_to_transform[1]"),
            std::string::npos);

  // Against a 2-layer model: LISA's default of 2 fits, 3 does not.
  v1::Model model;
  model.set_num_layers(2);
  lisa.set_adapter(v1::ADAPTER_TYPE_FULL);
  ASSERT_TRUE(CheckJobRequest(lisa).ok());
  EXPECT_TRUE(CheckJobForModel(lisa, model).ok());
  lisa.mutable_trainable()->mutable_lisa()->set_activated_layers(3);
  st = CheckJobForModel(lisa, model);
  EXPECT_EQ(st.message().substr(0, 33), "trainable.lisa.activated_layers: ")
      << st;
  v1::CreateJobRequest layers = Valid();
  layers.set_adapter(v1::ADAPTER_TYPE_FULL);
  layers.mutable_trainable()->add_layers("1-2");
  EXPECT_NE(
      CheckJobForModel(layers, model).message().find("trainable.layers[0]"),
      std::string::npos);
  // 0.03 of a 2-layer model's 14 matrices is 0.42: none.
  v1::CreateJobRequest few = Valid();
  few.set_adapter(v1::ADAPTER_TYPE_FULL);
  few.mutable_trainable()->mutable_half_ft()->set_fraction(0.03);
  ASSERT_TRUE(CheckJobRequest(few).ok());
  st = CheckJobForModel(few, model);
  EXPECT_EQ(st.message().substr(0, 28), "trainable.half_ft.fraction: ") << st;
  few.mutable_trainable()->mutable_half_ft()->set_fraction(0.04);  // 0.56: 1
  EXPECT_TRUE(CheckJobForModel(few, model).ok());
  dora.mutable_lora()->clear_layers_to_transform();
  dora.mutable_lora()->add_layers_to_transform(2);
  EXPECT_NE(CheckJobForModel(dora, model)
                .message()
                .find("lora.layers_to_transform[0]"),
            std::string::npos);

  // Resolution: LMFlow's defaults, HFT's seed from the job's.
  v1::File f;
  f.set_line_count(10);
  lisa.mutable_trainable()->mutable_lisa()->clear_activated_layers();
  v1::Job job = ResolveJob(lisa, f, model, "p", "ftjob-1", 77, JobDefaults{});
  EXPECT_EQ(job.trainable().lisa().activated_layers(), 2);
  EXPECT_EQ(job.trainable().lisa().interval_steps(), 20);
  hft.set_adapter(v1::ADAPTER_TYPE_FULL);
  job = ResolveJob(hft, f, model, "p", "ftjob-2", 77, JobDefaults{});
  EXPECT_EQ(job.trainable().half_ft().reselect(), v1::HALF_FT_RESELECT_STAGE);
  EXPECT_EQ(job.trainable().half_ft().seed(), 77);
  EXPECT_TRUE(job.trainable().half_ft().has_fraction());
  EXPECT_EQ(job.trainable().half_ft().fraction(), 0.5);
  EXPECT_TRUE(job.trainable().half_ft().has_include_embeddings());
  EXPECT_FALSE(job.trainable().half_ft().include_embeddings());
  job = ResolveJob(dora, f, model, "p", "ftjob-3", 77, JobDefaults{});
  EXPECT_TRUE(job.lora().use_dora());
  EXPECT_FALSE(ResolveJob(Valid(), f, model, "p", "ftjob-4", 1, JobDefaults{})
                   .has_trainable());
}

// A partial full fine-tuning reserves gradients and AdamW state (16 bytes a
// parameter) for what it trains only; the weights stay whole. A 4-layer
// model, hidden 64, vocabulary 1000, MLP 160, 4 heads of 16 with 2 kv heads:
//   ends   1000 * 64 * 2 + 64                         = 128'064
//   layer  q, o 64 * 64 * 2 + k, v 32 * 64 * 2
//          + gate, up, down 160 * 64 * 3 + norms 64 * 2 = 43'136
//   model  128'064 + 4 * 43'136                       = 300'608
TEST(JobRequestTest, PartialFineTuningReservesStateForTheTrainedPartOnly) {
  v1::File f;
  f.set_line_count(10);
  v1::Model model;
  model.set_parameter_count(300'608);
  model.set_hidden_size(64);
  model.set_num_layers(4);
  model.set_vocab_size(1000);
  model.set_intermediate_size(160);
  model.set_num_attention_heads(4);
  model.set_num_key_value_heads(2);
  model.set_head_dim(16);
  v1::CreateJobRequest r = Valid();
  r.set_adapter(v1::ADAPTER_TYPE_FULL);
  const int64_t full =
      ResolveJob(r, f, model, "p", "ftjob-f", 1, JobDefaults{}).memory_bytes();
  // The bytes saved against full fine-tuning with `trainable`.
  auto saved = [&](const std::function<void(v1::Trainable&)>& set,
                   const v1::Model& m) {
    v1::CreateJobRequest partial = r;
    set(*partial.mutable_trainable());
    EXPECT_TRUE(CheckJobRequest(partial).ok());
    return full - ResolveJob(partial, f, m, "p", "ftjob-t", 1, JobDefaults{})
                      .memory_bytes();
  };
  // LISA, gamma 2: the ends and 2 layers, 128'064 + 2 * 43'136 = 214'336.
  EXPECT_EQ(
      saved([](auto& t) { t.mutable_lisa()->set_activated_layers(2); }, model),
      (300'608 - 214'336) * 16);
  // HFT at 0.5: 8 of the 16 attention matrices, at worst q and o
  // (8 * 4096), and 14 - 8 = 6 MLP ones (6 * 10'240): 94'208.
  EXPECT_EQ(saved([](auto& t) { t.mutable_half_ft(); }, model),
            (300'608 - 94'208) * 16);
  EXPECT_EQ(
      saved([](auto& t) { t.mutable_half_ft()->set_include_embeddings(true); },
            model),
      (300'608 - 94'208 - 128'064) * 16);
  // HFT at 0.25: 4 attention (q, o), 7 - 4 = 3 MLP: 4 * 4096 + 3 * 10'240.
  EXPECT_EQ(
      saved([](auto& t) { t.mutable_half_ft()->set_fraction(0.25); }, model),
      (300'608 - 47'104) * 16);
  // CoFiTune: layer 1 (bottom2 of 4)'s up and down, 2 * 10'240; layers 2-3
  // whole, 2 * 43'136; self_attn and q_proj of every layer, 4 * 12'288.
  EXPECT_EQ(saved(
                [](auto& t) {
                  t.add_layers("bottom2");
                  t.add_modules("up_proj");
                  t.add_modules("down_proj");
                },
                model),
            (300'608 - 20'480) * 16);
  EXPECT_EQ(saved([](auto& t) { t.add_layers("2-3"); }, model),
            (300'608 - 86'272) * 16);
  EXPECT_EQ(saved(
                [](auto& t) {
                  t.add_modules("self_attn");
                  t.add_modules("q_proj");
                },
                model),
            (300'608 - 4 * 12'288) * 16);
  // A model registered without its layer shapes: estimated as full.
  v1::Model unknown = model;
  unknown.clear_intermediate_size();
  EXPECT_EQ(saved([](auto& t) { t.mutable_lisa(); }, unknown), 0);
}

TEST(JobRequestTest, RefusesBadPreferenceSettingsByName) {
  struct Case {
    const char* type;
    std::function<void(v1::Hyperparameters&)> mutate;
    const char* error;
  };
  const Case cases[] = {
      {"dpo", [](auto& hp) { hp.set_beta(0); }, "method.dpo.hyperparameters.beta: 0 must be in (0, 2]"},
      {"dpo", [](auto& hp) { hp.set_beta(2.5); }, "method.dpo.hyperparameters.beta"},
      {"dpo", [](auto& hp) { hp.set_beta(NAN); }, "method.dpo.hyperparameters.beta"},
      {"dpo", [](auto& hp) { hp.set_loss_type(static_cast<v1::PreferenceLoss>(9)); },
       "method.dpo.hyperparameters.loss_type: unknown value"},
      {"dpo", [](auto& hp) { hp.set_label_smoothing(0.5); },
       "method.dpo.hyperparameters.label_smoothing: must be in [0, 0.5)"},
      {"dpo",
       [](auto& hp) {
         hp.set_loss_type(v1::PREFERENCE_LOSS_IPO);
         hp.set_label_smoothing(0.1);
       },
       "method.dpo.hyperparameters.label_smoothing: is for loss_type SIGMOID and ROBUST"},
      {"dpo", [](auto& hp) { hp.set_rpo_alpha(-1); }, "method.dpo.hyperparameters.rpo_alpha"},
      {"dpo", [](auto& hp) { hp.set_max_prompt_len(512); },
       "method.dpo.hyperparameters.max_prompt_len: 512 must be below max_seq_len (512)"},
      {"dpo", [](auto& hp) { hp.set_n_epochs(0); }, "method.dpo.hyperparameters.n_epochs"},
      {"orpo", [](auto& hp) { hp.set_loss_type(v1::PREFERENCE_LOSS_HINGE); },
       "method.orpo.hyperparameters.loss_type: is for method.type \"dpo\", not \"orpo\""},
      {"orpo", [](auto& hp) { hp.set_beta(-1); }, "method.orpo.hyperparameters.beta"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest r = Valid();
    r.mutable_method()->set_type(c.type);
    c.mutate(*MutableMethodHyperparameters(*r.mutable_method()));
    absl::Status st = CheckJobRequest(r);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.error;
    EXPECT_EQ(st.message().substr(0, strlen(c.error)), c.error) << st.message();
  }
  // Another method's message is refused, naming it.
  v1::CreateJobRequest r = Valid();
  r.mutable_method()->set_type("dpo");
  r.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(2);
  EXPECT_EQ(CheckJobRequest(r).message(),
            "method.supervised: is for method.type \"supervised\"; this job's method.type is "
            "\"dpo\"");
}

TEST(JobRequestTest, ResolvesPreferenceDefaultsAndChecksTheFilesFormat) {
  v1::File f;
  f.set_id("file-p");
  f.set_line_count(40);
  f.set_format("preference");
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  v1::CreateJobRequest r = Valid();
  r.mutable_method()->set_type("dpo");
  r.mutable_method()->mutable_dpo()->mutable_hyperparameters()->set_max_seq_len(256);
  ASSERT_TRUE(CheckJobRequest(r).ok());
  const v1::Job job = ResolveJob(r, f, model, "p", "ftjob-d", 1, JobDefaults{});
  EXPECT_EQ(job.method().type(), "dpo");
  EXPECT_FALSE(job.method().has_supervised());
  const auto& hp = job.method().dpo().hyperparameters();
  EXPECT_EQ(hp.beta(), 0.1);
  EXPECT_EQ(hp.loss_type(), v1::PREFERENCE_LOSS_SIGMOID);
  EXPECT_EQ(hp.label_smoothing(), 0);
  EXPECT_EQ(hp.rpo_alpha(), 0);
  EXPECT_EQ(hp.max_prompt_len(), 128);  // min(512, max_seq_len / 2)
  EXPECT_EQ(hp.batch_size(), 2);        // 40 pairs / 20
  EXPECT_EQ(hp.n_epochs(), 3);
  const google::protobuf::Descriptor* d = hp.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    if (d->field(i)->has_presence()) {
      EXPECT_TRUE(hp.GetReflection()->HasField(hp, d->field(i)))
          << d->field(i)->full_name() << " not resolved";
    }
  }
  // A pair is two rows: more memory than supervised on the same batch.
  v1::CreateJobRequest sft = Valid();
  sft.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_max_seq_len(256);
  EXPECT_GT(job.memory_bytes(), ResolveJob(sft, f, model, "p", "ftjob-s", 1, JobDefaults{})
                                    .memory_bytes());
  r.mutable_method()->set_type("orpo");
  r.mutable_method()->clear_dpo();
  const v1::Job orpo = ResolveJob(r, f, model, "p", "ftjob-o", 1, JobDefaults{});
  EXPECT_EQ(orpo.method().orpo().hyperparameters().beta(), 0.1);
  EXPECT_EQ(orpo.method().orpo().hyperparameters().loss_type(),
            v1::PREFERENCE_LOSS_UNSPECIFIED);

  // The files' formats must fit the method.
  v1::CreateJobRequest dpo = Valid();
  dpo.mutable_method()->set_type("dpo");
  EXPECT_TRUE(CheckJobFiles(dpo, f, nullptr).ok());
  v1::File chat;
  chat.set_id("file-c");
  chat.set_format("chat");
  EXPECT_EQ(CheckJobFiles(dpo, chat, nullptr).message(),
            "training_file: file-c holds chat data; method dpo trains on preference data "
            "(lines with input, preferred_output and non_preferred_output)");
  EXPECT_EQ(CheckJobFiles(dpo, f, &chat).message().substr(0, 40),
            "validation_file: file-c holds chat data;");
  EXPECT_TRUE(absl::StartsWith(CheckJobFiles(Valid(), f, nullptr).message(),
                               "training_file: file-p holds preference data; it is for "
                               "method.type \"dpo\" or \"orpo\""));
  EXPECT_TRUE(CheckJobFiles(Valid(), chat, nullptr).ok());
}

TEST(JobRequestTest, PromptTuningResolvesItsAdapterAndRefusesLoraSettings) {
  v1::File f;
  f.set_line_count(40);
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  v1::CreateJobRequest r = Valid();
  r.mutable_method()->set_type("prompt_tuning");
  r.mutable_method()->mutable_prompt_tuning()->mutable_hyperparameters()->set_n_epochs(2);
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  const v1::Job job = ResolveJob(r, f, model, "p", "ftjob-p", 1, JobDefaults{});
  EXPECT_EQ(job.adapter(), v1::ADAPTER_TYPE_PROMPT_TUNING);
  EXPECT_FALSE(job.has_lora());
  EXPECT_EQ(job.method().prompt_tuning().num_virtual_tokens(), 20);
  EXPECT_EQ(job.method().prompt_tuning().init(), v1::PROMPT_TUNING_INIT_RANDOM);
  EXPECT_EQ(job.method().prompt_tuning().hyperparameters().n_epochs(), 2);
  EXPECT_EQ(job.method().prompt_tuning().hyperparameters().max_seq_len(), 512);

  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* error;
  };
  const Case cases[] = {
      {[](auto& r) { r.mutable_lora()->set_rank(4); }, "lora: LoRA settings are for adapter LORA"},
      {[](auto& r) { r.set_adapter(v1::ADAPTER_TYPE_FULL); }, "adapter: prompt tuning trains"},
      {[](auto& r) { r.mutable_method()->mutable_prompt_tuning()->set_num_virtual_tokens(0); },
       "method.prompt_tuning.num_virtual_tokens: 0 is out of range 1..1024"},
      {[](auto& r) {
         r.mutable_method()->mutable_prompt_tuning()->set_init(v1::PROMPT_TUNING_INIT_TEXT);
       },
       "method.prompt_tuning.init_text: required with init TEXT"},
      {[](auto& r) { r.mutable_method()->mutable_prompt_tuning()->set_init_text("hi"); },
       "method.prompt_tuning.init_text: is for init TEXT only"},
      {[](auto& r) {
         r.mutable_method()->mutable_prompt_tuning()->mutable_hyperparameters()->set_beta(0.1);
       },
       "method.prompt_tuning.hyperparameters.beta: is for method.type"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest bad = r;
    c.mutate(bad);
    const absl::Status st = CheckJobRequest(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.error;
    EXPECT_TRUE(absl::StartsWith(st.message(), c.error)) << st.message();
  }
  v1::CreateJobRequest sft = Valid();
  sft.set_adapter(v1::ADAPTER_TYPE_PROMPT_TUNING);
  EXPECT_TRUE(absl::StartsWith(CheckJobRequest(sft).message(),
                               "adapter: PROMPT_TUNING comes with method.type"));
}

TEST(JobRequestTest, S2ftJobsResolveTheirSelectionAndRefuseOthersSettings) {
  v1::File f;
  f.set_line_count(40);
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_intermediate_size(160);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  v1::CreateJobRequest r = Valid();
  r.set_adapter(v1::ADAPTER_TYPE_S2FT);
  r.set_seed(77);
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  v1::Job job = ResolveJob(r, f, model, "p", "ftjob-s", 1, JobDefaults{});
  EXPECT_EQ(job.adapter(), v1::ADAPTER_TYPE_S2FT);
  EXPECT_FALSE(job.has_lora());
  // None set: the reference's LLaMA-3 setting, the job's seed.
  EXPECT_DOUBLE_EQ(job.s2ft().d_ratio(), 0.03);
  EXPECT_EQ(job.s2ft().u_ratio(), 0);
  EXPECT_EQ(job.s2ft().o_ratio(), 0);
  EXPECT_EQ(job.s2ft().v_ratio(), 0);
  EXPECT_EQ(job.s2ft().seed(), 77);
  EXPECT_EQ(job.reports().intruder_top_k(), 0);  // a LoRA report
  EXPECT_GT(job.memory_bytes(), 0);

  // Some set: the others are 0 (LLaMA-2's o_ratio 0.052 alone here).
  r.mutable_s2ft()->set_o_ratio(0.052);
  r.mutable_s2ft()->set_seed(0);
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  job = ResolveJob(r, f, model, "p", "ftjob-s", 1, JobDefaults{});
  EXPECT_EQ(job.s2ft().d_ratio(), 0);
  EXPECT_DOUBLE_EQ(job.s2ft().o_ratio(), 0.052);
  EXPECT_EQ(job.s2ft().seed(), 0);

  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* error;
  };
  const Case cases[] = {
      {[](auto& r) { r.mutable_lora()->set_rank(4); }, "lora: LoRA settings are for adapter LORA"},
      {[](auto& r) { r.mutable_s2ft()->set_d_ratio(1.5); }, "s2ft.d_ratio: must be in [0, 1]"},
      {[](auto& r) { r.mutable_s2ft()->set_v_ratio(NAN); }, "s2ft.v_ratio: must be in [0, 1]"},
      {[](auto& r) {
         r.clear_s2ft();
         r.mutable_s2ft()->set_u_ratio(0);
       },
       "s2ft.d_ratio: every ratio is 0"},
      {[](auto& r) { r.mutable_s2ft()->set_seed(-1); }, "s2ft.seed: must be at least 0"},
      {[](auto& r) { r.set_adapter(v1::ADAPTER_TYPE_LORA); },
       "s2ft: S²FT settings are for adapter S2FT"},
      {[](auto& r) { r.mutable_trainable()->add_layers("0"); },
       "trainable.layers: is for full fine-tuning"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest bad = r;
    c.mutate(bad);
    const absl::Status st = CheckJobRequest(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.error;
    EXPECT_TRUE(absl::StartsWith(st.message(), c.error)) << st.message();
  }
}

// A 40-line chat upload and a tiny model, for the self-training jobs.
v1::File ChatFile() {
  v1::File f;
  f.set_id("file-t");
  f.set_line_count(40);
  f.set_format("chat");
  return f;
}
v1::Model TinyModel() {
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  return model;
}

TEST(JobRequestTest, RftJobsAreCheckedAndResolved) {
  const v1::File f = ChatFile();
  const v1::Model model = TinyModel();
  v1::CreateJobRequest r = Valid();
  r.mutable_method()->set_type("rft");
  r.mutable_method()->mutable_rft()->set_iterations(2);
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  ASSERT_TRUE(CheckJobFiles(r, f, nullptr).ok());
  const v1::Job job = ResolveJob(r, f, model, "p", "ftjob-r", 1, JobDefaults{});
  const v1::RftMethod& m = job.method().rft();
  EXPECT_EQ(job.method().type(), "rft");
  EXPECT_EQ(m.iterations(), 2);
  EXPECT_EQ(m.samples_per_prompt(), 4);
  EXPECT_EQ(m.temperature(), 0.7);
  EXPECT_EQ(m.top_p(), 1);
  EXPECT_EQ(m.max_new_tokens(), 256);
  EXPECT_EQ(m.answer_extractor(), "gsm8k");
  EXPECT_EQ(m.dedupe(), "equations");
  EXPECT_TRUE(m.include_gold());
  EXPECT_EQ(m.init(), "current");
  EXPECT_EQ(m.hyperparameters().n_epochs(), 3);
  EXPECT_EQ(job.adapter(), v1::ADAPTER_TYPE_LORA);

  struct Case {
    std::function<void(v1::CreateJobRequest&)> mutate;
    const char* error;
  };
  const Case cases[] = {
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_iterations(0); },
       "method.rft.iterations: 0 is out of range 1..16"},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_samples_per_prompt(300); },
       "method.rft.samples_per_prompt: 300 is out of range 1..256"},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_top_p(0); },
       "method.rft.top_p: must be in (0, 1]"},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_answer_extractor("json"); },
       "method.rft.answer_extractor: \"json\" is not one of"},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_answer_extractor("regex"); },
       "method.rft.answer_pattern: is required with regex"},
      {[](auto& r) {
         r.mutable_method()->mutable_rft()->set_answer_extractor("regex");
         r.mutable_method()->mutable_rft()->set_answer_pattern("([0-9]");
       },
       "method.rft.answer_pattern: does not compile"},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_answer_pattern("x"); },
       "method.rft.answer_pattern: is for answer_extractor \"regex\""},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_dedupe("fuzzy"); },
       "method.rft.dedupe: \"fuzzy\" is not one of"},
      {[](auto& r) { r.mutable_method()->mutable_rft()->set_init("sft"); },
       "method.rft.init: \"sft\" is not one of"},
      {[](auto& r) {
         r.mutable_method()->mutable_rft()->mutable_hyperparameters()->set_beta(0.1);
       },
       "method.rft.hyperparameters.beta: is for method.type"},
      {[](auto& r) { r.mutable_method()->mutable_supervised()->mutable_hyperparameters(); },
       "method.supervised: is for method.type \"supervised\""},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest bad = r;
    c.mutate(bad);
    const absl::Status st = CheckJobRequest(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.error;
    EXPECT_TRUE(absl::StartsWith(st.message(), c.error)) << st.message();
  }
  v1::CreateJobRequest sft = Valid();
  sft.mutable_method()->mutable_rft()->set_iterations(2);
  EXPECT_TRUE(absl::StartsWith(CheckJobRequest(sft).message(), "method.rft: is for method.type"))
      << CheckJobRequest(sft);
  v1::File text = f;
  text.set_format("text");
  EXPECT_TRUE(absl::StartsWith(CheckJobFiles(r, text, nullptr).message(),
                               "training_file: file-"))
      << CheckJobFiles(r, text, nullptr);
}

TEST(JobRequestTest, SpinJobsTakeDpoSettingsAndChatData) {
  const v1::File f = ChatFile();
  const v1::Model model = TinyModel();
  v1::CreateJobRequest r = Valid();
  r.mutable_method()->set_type("spin");
  r.mutable_method()->mutable_spin()->mutable_hyperparameters()->set_beta(0.2);
  ASSERT_TRUE(CheckJobRequest(r).ok()) << CheckJobRequest(r);
  ASSERT_TRUE(CheckJobFiles(r, f, nullptr).ok());
  const v1::Job job = ResolveJob(r, f, model, "p", "ftjob-s", 1, JobDefaults{});
  const v1::SpinMethod& m = job.method().spin();
  EXPECT_EQ(m.iterations(), 2);
  EXPECT_EQ(m.temperature(), 0);
  EXPECT_EQ(m.top_p(), 1);
  EXPECT_EQ(m.max_new_tokens(), 256);
  EXPECT_TRUE(m.accumulate_previous());
  EXPECT_EQ(m.hyperparameters().beta(), 0.2);
  EXPECT_EQ(m.hyperparameters().loss_type(), v1::PREFERENCE_LOSS_SIGMOID);
  EXPECT_EQ(m.hyperparameters().max_prompt_len(), 256);
  for (const auto& [mutate, error] :
       std::vector<std::pair<std::function<void(v1::CreateJobRequest&)>, const char*>>{
           {[](auto& r) { r.mutable_method()->mutable_spin()->set_iterations(17); },
            "method.spin.iterations: 17 is out of range 1..16"},
           {[](auto& r) { r.mutable_method()->mutable_spin()->set_temperature(-1); },
            "method.spin.temperature: must be in [0, 100]"},
           {[](auto& r) { r.set_validation_file("file-v"); },
            "validation_file: cannot be combined with method.type \"spin\""},
       }) {
    v1::CreateJobRequest bad = r;
    mutate(bad);
    const absl::Status st = CheckJobRequest(bad);
    EXPECT_TRUE(absl::StartsWith(st.message(), error)) << st.message();
  }
  v1::File pc = f;
  pc.set_format("prompt_completion");
  EXPECT_TRUE(absl::StartsWith(CheckJobFiles(r, pc, nullptr).message(),
                               "training_file: file-t holds prompt_completion data"))
      << CheckJobFiles(r, pc, nullptr);
}

// devices: 1..64, several only for the data-parallel methods and never
// more than a batch_size the user set; resolved to 1, and an auto batch
// raised to one example per worker.
TEST(JobRequestTest, DevicesAreCheckedAndResolved) {
  const v1::Model model = TinyModel();
  v1::File f = ChatFile();  // 40 lines: an auto batch of 2
  auto with = [](const std::string& type, int32_t devices) {
    v1::CreateJobRequest r = Valid();
    r.mutable_method()->set_type(type);
    r.set_devices(devices);
    return r;
  };
  for (const char* type : {"supervised", "dpo", "orpo"}) {
    EXPECT_TRUE(CheckJobRequest(with(type, 4)).ok())
        << type << ": " << CheckJobRequest(with(type, 4));
  }
  struct Case {
    v1::CreateJobRequest request;
    const char* field;
  };
  v1::CreateJobRequest merge;
  merge.set_model("lathe-demo");
  merge.mutable_method()->set_type("merge");
  for (const char* id : {"ft:lathe-demo:a", "ft:lathe-demo:b"}) {
    merge.mutable_method()->mutable_merge()->add_inputs(id);
  }
  merge.set_devices(2);
  v1::CreateJobRequest analyze = with("analyze", 2);
  v1::CreateJobRequest small_batch = with("dpo", 4);
  small_batch.mutable_method()
      ->mutable_dpo()
      ->mutable_hyperparameters()
      ->set_batch_size(3);
  const Case cases[] = {
      {with("supervised", 0), "devices: 0 is out of range 1..64"},
      {with("supervised", 65), "devices: 65 is out of range 1..64"},
      {with("supervised", -1), "devices"},
      {with("rft", 2), "devices: 2 workers"},
      {with("spin", 2), "devices"},
      {with("prompt_tuning", 2), "devices"},
      {merge, "devices"},
      {analyze, "devices"},
      {small_batch,
       "method.dpo.hyperparameters.batch_size: 3 is less than devices (4)"},
  };
  for (const Case& c : cases) {
    absl::Status st = CheckJobRequest(c.request);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.field << ": " << st;
    EXPECT_NE(st.message().find(c.field), absl::string_view::npos)
        << st.message() << " should name " << c.field;
  }
  // One worker is allowed for every method, and is what auto means.
  merge.set_devices(1);
  EXPECT_TRUE(CheckJobRequest(merge).ok()) << CheckJobRequest(merge);
  EXPECT_TRUE(CheckJobRequest(with("rft", 1)).ok());
  EXPECT_EQ(ResolveJob(Valid(), f, model, "p", "ftjob-1", 1, {}).devices(), 1);
  merge.clear_devices();
  EXPECT_EQ(
      ResolveJob(merge, v1::File(), model, "p", "ftjob-m", 1, {}).devices(), 1);
  analyze.clear_devices();
  EXPECT_EQ(ResolveJob(analyze, f, model, "p", "ftjob-a", 1, {}).devices(), 1);

  // An auto batch is at least one example per worker; one that is large
  // enough, or set, is kept.
  const v1::Job two =
      ResolveJob(with("supervised", 2), f, model, "p", "ftjob-2", 1, {});
  EXPECT_EQ(two.devices(), 2);
  EXPECT_EQ(two.method().supervised().hyperparameters().batch_size(), 2);
  const v1::Job sixteen =
      ResolveJob(with("supervised", 16), f, model, "p", "ftjob-16", 1, {});
  EXPECT_EQ(sixteen.devices(), 16);
  EXPECT_EQ(sixteen.method().supervised().hyperparameters().batch_size(), 16);
  v1::CreateJobRequest set = with("dpo", 4);
  set.mutable_method()
      ->mutable_dpo()
      ->mutable_hyperparameters()
      ->set_batch_size(4);
  ASSERT_TRUE(CheckJobRequest(set).ok()) << CheckJobRequest(set);
  f.set_format("preference");
  const v1::Job given = ResolveJob(set, f, model, "p", "ftjob-4", 1, {});
  EXPECT_EQ(given.devices(), 4);
  EXPECT_EQ(given.method().dpo().hyperparameters().batch_size(), 4);
  // Each worker's need: the same as the job's on one worker.
  v1::CreateJobRequest one = set;
  one.set_devices(1);
  EXPECT_EQ(given.memory_bytes(),
            ResolveJob(one, f, model, "p", "ftjob-5", 1, {}).memory_bytes());

  // A job stored before devices was recorded runs on one worker.
  v1::Job old;
  old.mutable_method()->mutable_supervised();
  FillJobDefaults(old, {});
  EXPECT_EQ(old.devices(), 1);
}

TEST(JobRequestTest, FingerprintIgnoresOnlyTheKey) {
  v1::CreateJobRequest a = Valid(), b = Valid();
  a.set_idempotency_key("k1");
  b.set_idempotency_key("k2");
  EXPECT_EQ(RequestFingerprint(a), RequestFingerprint(b));
  b.set_suffix("x");
  EXPECT_NE(RequestFingerprint(a), RequestFingerprint(b));
}

}  // namespace
}  // namespace lathe
