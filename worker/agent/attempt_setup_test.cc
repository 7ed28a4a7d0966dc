#include "worker/agent/attempt_setup.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/test_util.h"

namespace lathe::worker {
namespace {

namespace fs = std::filesystem;

v1::Assignment DemoAssignment() {
  v1::Assignment as;
  as.set_job_id("ftjob-1");
  as.set_attempt(1);
  v1::Job* job = as.mutable_job();
  job->set_model("demo");
  job->set_training_file("file-abc");
  job->set_seed(7);
  job->set_adapter(v1::ADAPTER_TYPE_LORA);
  auto* hp =
      job->mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_n_epochs(1);
  hp->set_batch_size(2);
  hp->set_learning_rate(1e-3);
  hp->set_lr_scheduler(v1::LR_SCHEDULER_LINEAR);
  hp->set_gradient_accumulation_steps(1);
  hp->set_max_seq_len(512);
  hp->set_max_grad_norm(1);
  job->mutable_lora()->set_rank(4);
  job->mutable_lora()->set_alpha(8);
  job->mutable_lora()->add_target_modules("q_proj");
  return as;
}

constexpr char kGoodLine[] =
    R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]})";
constexpr char kBadLine[] =
    R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":5}]})";

TEST(AttemptSetupTest, OptionsKeepFilesInTheAttemptFolderAndNameThemById) {
  v1::Assignment as = DemoAssignment();
  as.mutable_job()->set_validation_file("file-xyz");
  as.mutable_resume_from()->set_step_number(3);
  as.mutable_job()->mutable_method()->mutable_supervised()->mutable_hyperparameters()
      ->set_checkpoint_every_steps(5);
  const engine::RunSpec o = *RunSpecFor(as, "/w/ftjob-1/attempt-1");
  EXPECT_EQ(o.data.training_file, "/w/ftjob-1/attempt-1/train.jsonl");
  EXPECT_EQ(o.data.training_file_name, "training_file file-abc");
  EXPECT_EQ(o.data.validation_file, "/w/ftjob-1/attempt-1/valid.jsonl");
  EXPECT_EQ(o.data.validation_file_name, "validation_file file-xyz");
  EXPECT_EQ(o.checkpoint.resume_from, "/w/ftjob-1/attempt-1/resume");
  EXPECT_EQ(o.output.dir, "/w/ftjob-1/attempt-1/adapter");
  EXPECT_EQ(o.checkpoint.dir, "/w/ftjob-1/attempt-1/checkpoints");
  EXPECT_EQ(o.checkpoint.every_steps, 5);
  EXPECT_EQ(o.model.base_model_name, "demo");
  EXPECT_EQ(o.schedule.n_epochs, 1);
  EXPECT_EQ(o.data.batch_size, 2);
  EXPECT_EQ(o.optimizer.learning_rate, 1e-3);
  EXPECT_EQ(o.seed, 7u);
  EXPECT_EQ(engine::Lora(o.adapter)->rank, 4);
  EXPECT_EQ(engine::Lora(o.adapter)->target_modules, std::vector<std::string>{"q_proj"});

  const engine::RunSpec fresh = *RunSpecFor(DemoAssignment(), "/w");
  EXPECT_EQ(fresh.data.validation_file, "");
  EXPECT_EQ(fresh.data.validation_file_name, "");
  EXPECT_EQ(fresh.checkpoint.resume_from, "");
}

// The engine run as the agent runs it, on data the engine refuses: the job
// error names the job's file id and the line, and no path of the worker.
TEST(AttemptSetupTest, BadDataIsReportedByFileIdAndLineWithoutWorkerPaths) {
  engine::testing::TempDir demo;
  ASSERT_TRUE(engine::MakeDemo(demo.path()).ok());
  engine::testing::TempDir attempt;
  v1::Assignment as = DemoAssignment();
  as.mutable_job()->set_validation_file("file-xyz");
  engine::RunSpec o = *RunSpecFor(as, attempt.path());
  o.model.dir = demo.path() + "/model";

  std::ofstream(o.data.training_file) << kGoodLine << "\n" << kBadLine << "\n";
  std::ofstream(o.data.validation_file) << kGoodLine << "\n";
  absl::StatusOr<engine::TrainResult> result = engine::Train(o, {});
  ASSERT_FALSE(result.ok());
  v1::JobError error = JobErrorFor(result.status());
  EXPECT_EQ(error.code(), "invalid_training_file");
  EXPECT_EQ(error.param(), "training_file");
  EXPECT_TRUE(error.user_fault());
  EXPECT_EQ(error.message(),
            "training_file file-abc: line 2: messages[1].content: "
            "missing or not a string");

  // The validation file is named as such (not blamed on training_file).
  std::ofstream(o.data.training_file) << kGoodLine << "\n";
  std::ofstream(o.data.validation_file) << "\n"
                                   << "\n"
                                   << "{oops\n";
  result = engine::Train(o, {});
  ASSERT_FALSE(result.ok());
  error = JobErrorFor(result.status());
  EXPECT_EQ(error.code(), "invalid_validation_file");
  EXPECT_EQ(error.param(), "validation_file");
  EXPECT_EQ(error.message(),
            "validation_file file-xyz: line 3: not valid JSON (or not valid UTF-8) near byte 2");

  // A missing model folder is the base model's fault, not the data's; its
  // details, paths included, stay in the worker's log.
  o.model.dir = attempt.path() + "/no-model";
  result = engine::Train(o, {});
  ASSERT_FALSE(result.ok());
  ASSERT_NE(result.status().message().find(attempt.path()), std::string::npos);
  error = JobErrorFor(result.status());
  EXPECT_EQ(error.code(), "invalid_base_model");
  EXPECT_FALSE(error.user_fault());
  EXPECT_EQ(error.message().find(attempt.path()), std::string::npos)
      << error.message();
}

// A corrupt base model (its weights cut short) is a model error, a
// platform fault: never blamed on the user's training file.
TEST(AttemptSetupTest, ACorruptBaseModelIsAModelErrorNotTheDatas) {
  engine::testing::TempDir demo;
  ASSERT_TRUE(engine::MakeDemo(demo.path()).ok());
  const std::string weights = demo.path() + "/model/model.safetensors";
  fs::resize_file(weights, fs::file_size(weights) / 2);
  engine::testing::TempDir attempt;
  engine::RunSpec o = *RunSpecFor(DemoAssignment(), attempt.path());
  o.model.dir = demo.path() + "/model";
  std::ofstream(o.data.training_file) << kGoodLine << "\n";
  absl::StatusOr<engine::TrainResult> result = engine::Train(o, {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(engine::ErrorKindOf(result.status()), engine::ErrorKind::kModel)
      << result.status();
  v1::JobError error = JobErrorFor(result.status());
  EXPECT_EQ(error.code(), "invalid_base_model");
  EXPECT_EQ(error.param(), "model");
  EXPECT_FALSE(error.user_fault());
  // A bad setting is the user's, named.
  o.schedule.lr_scheduler = "sawtooth";
  o.model.dir = demo.path() + "/no-such-model";
  result = engine::Train(o, {});
  error = JobErrorFor(result.status());
  EXPECT_EQ(error.code(), "invalid_hyperparameters");
  EXPECT_NE(error.message().find("lr_scheduler"), std::string::npos) << error.message();
  EXPECT_TRUE(error.user_fault());
}

TEST(AttemptSetupTest, LossAndMemoryErrorsNameTheHyperparameter) {
  using engine::ErrorKind;
  using engine::WithErrorKind;
  v1::JobError nan = JobErrorFor(
      WithErrorKind(absl::OutOfRangeError("nan_loss: step 3"), ErrorKind::kUserOptions,
                    "method.supervised.hyperparameters.learning_rate_multiplier"));
  EXPECT_EQ(nan.code(), "nan_loss");
  EXPECT_EQ(nan.message(), "nan_loss: step 3");
  EXPECT_EQ(nan.param(),
            "method.supervised.hyperparameters.learning_rate_multiplier");
  EXPECT_TRUE(nan.user_fault());
  v1::JobError oom = JobErrorFor(WithErrorKind(absl::ResourceExhaustedError("out_of_memory: smaller"),
                                               ErrorKind::kUserOptions,
                                               "method.supervised.hyperparameters.batch_size"));
  EXPECT_EQ(oom.code(), "out_of_memory");
  EXPECT_EQ(oom.param(), "method.supervised.hyperparameters.batch_size");
  EXPECT_TRUE(oom.user_fault());
  // An error with no kind (INVALID_ARGUMENT, say) is the platform's, not
  // the training file's.
  v1::JobError model = JobErrorFor(
      absl::InvalidArgumentError("/models/x/tokenizer_config.json: bad"));
  EXPECT_EQ(model.code(), "training_error");
  EXPECT_EQ(model.param(), "");
  EXPECT_FALSE(model.user_fault());
  EXPECT_EQ(model.message().find("/models/x"), std::string::npos);
}

}  // namespace
}  // namespace lathe::worker
