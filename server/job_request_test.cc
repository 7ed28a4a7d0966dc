#include "server/job_request.h"

#include <cmath>

#include <gtest/gtest.h>

namespace lathe {
namespace {

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
      {[](auto& r) { r.mutable_method()->set_type("dpo"); }, "method.type"},
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

TEST(JobRequestTest, ResolvesAutoAndKeepsGivenValues) {
  v1::File f;
  f.set_line_count(100);
  v1::CreateJobRequest r = Valid();
  v1::Model model;
  model.set_parameter_count(1'000'000);
  model.set_hidden_size(64);
  model.set_num_layers(2);
  model.set_vocab_size(1000);
  v1::Job auto_job = ResolveJob(r, f, model, "proj-a", "ftjob-1", 7);
  const auto& hp = auto_job.method().supervised().hyperparameters();
  EXPECT_EQ(auto_job.method().type(), "supervised");
  EXPECT_EQ(hp.n_epochs(), 3);
  EXPECT_EQ(hp.batch_size(), 5);
  EXPECT_EQ(hp.learning_rate_multiplier(), 1);
  EXPECT_EQ(auto_job.lora().rank(), 8);
  EXPECT_EQ(auto_job.lora().alpha(), 16);
  EXPECT_EQ(auto_job.lora().target_modules_size(), 4);
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
  v1::Job given = ResolveJob(r, f, model, "proj-a", "ftjob-2", 7);
  EXPECT_EQ(given.priority(), v1::JOB_PRIORITY_HIGH);
  EXPECT_EQ(given.method().supervised().hyperparameters().n_epochs(), 1);
  EXPECT_EQ(given.lora().rank(), 4);
  EXPECT_EQ(given.lora().alpha(), 8);
  EXPECT_EQ(given.seed(), 42);
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
