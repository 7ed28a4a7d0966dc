#include "worker/engine/recipes/run.h"
#include "worker/engine/reports/reports.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/text/json_file.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/model/model_export.h"
#include "worker/engine/optim/schedule.h"
#include "worker/engine/inference/score.h"
#include "worker/engine/text/tokenizer.h"
#include "worker/engine/recipes/recipe_test_util.h"
#include "worker/engine/test_util.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {
namespace {

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  // The demo's spec, writing its adapter under `out`.
  static RunSpec DemoOptions(const std::string& out) {
    return testing::DemoRunSpec(demo_->path(), out);
  }

  // Trains and returns every step's loss.
  static std::vector<double> TrainLosses(const RunSpec& options,
                                         TrainResult* result = nullptr) {
    std::vector<double> losses;
    absl::StatusOr<TrainResult> r = Train(
        options,
        {.on_step = [&](const StepMetrics& m) { losses.push_back(m.loss); }});
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok() && result != nullptr) *result = *r;
    return losses;
  }

  // A run's step metrics, its checkpoints and its outcome.
  struct Run {
    absl::StatusOr<TrainResult> result;
    std::vector<StepMetrics> steps;
    std::vector<CheckpointInfo> checkpoints;
    std::vector<double> losses() const {
      std::vector<double> out;
      for (const StepMetrics& m : steps) out.push_back(m.loss);
      return out;
    }
  };

  // Trains; asks for kCheckpointAndStop before step `stop_after` + 1 when
  // it is positive.
  static Run TrainRun(const RunSpec& options, int stop_after = 0) {
    Run run;
    TrainHooks hooks;
    hooks.on_checkpoint = [&](const CheckpointInfo& c) {
      run.checkpoints.push_back(c);
    };
    int64_t done = 0;
    hooks.on_step = [&](const StepMetrics& m) {
      run.steps.push_back(m);
      done = m.step;
    };
    hooks.should_stop = [&] {
      return stop_after > 0 && done >= stop_after
                 ? StopRequest::kCheckpointAndStop
                 : StopRequest::kNone;
    };
    run.result = Train(options, hooks);
    return run;
  }

  static testing::TempDir* demo_;
};
testing::TempDir* TrainerTest::demo_ = nullptr;

std::vector<double> Tail(const std::vector<double>& v, size_t from) {
  return std::vector<double>(v.begin() + from, v.end());
}

double Mean(const std::vector<double>& v, size_t begin, size_t end) {
  return std::accumulate(v.begin() + begin, v.begin() + end, 0.0) /
         (end - begin);
}

TEST_F(TrainerTest, LossFallsAndAdapterIsExportedInPeftLayout) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path());
  std::vector<StepMetrics> steps;
  absl::StatusOr<TrainResult> result = Train(
      options, {.on_step = [&](const StepMetrics& m) { steps.push_back(m); }});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(steps.size(), 60u);  // 80 examples / batch 4 * 3 epochs
  EXPECT_EQ(result->steps, 60);
  EXPECT_EQ(steps.back().step, 60);
  EXPECT_EQ(steps.back().total_steps, 60);
  EXPECT_DOUBLE_EQ(steps[0].learning_rate, 2e-3);
  EXPECT_LT(steps.back().learning_rate, steps[0].learning_rate);
  EXPECT_EQ(steps.back().trained_tokens, result->trained_tokens);
  EXPECT_GT(steps[0].tokens_per_second, 0);
  std::vector<double> losses;
  for (const StepMetrics& m : steps) losses.push_back(m.loss);
  EXPECT_LT(result->last_loss, result->first_loss);
  // Clearly falling: the last epoch averages well under the first steps.
  EXPECT_LT(Mean(losses, 40, 60), Mean(losses, 0, 5) - 1.5);
  EXPECT_GT(steps.back().token_accuracy, steps[0].token_accuracy);
  ASSERT_TRUE(result->validation_loss.has_value());
  EXPECT_LT(*result->validation_loss, Mean(losses, 0, 5));

  absl::StatusOr<nlohmann::json> config =
      ReadJsonFile(out.path() + "/adapter_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ((*config)["peft_type"], "LORA");
  EXPECT_EQ((*config)["task_type"], "CAUSAL_LM");
  EXPECT_EQ((*config)["r"], 8);
  EXPECT_EQ((*config)["lora_alpha"], 16.0);
  EXPECT_EQ((*config)["bias"], "none");
  EXPECT_EQ((*config)["use_rslora"], false);
  EXPECT_EQ((*config)["fan_in_fan_out"], false);
  EXPECT_EQ((*config)["inference_mode"], true);
  EXPECT_EQ((*config)["base_model_name_or_path"], "lathe-demo-tiny-llama");

  absl::StatusOr<safetensors::Header> header =
      safetensors::ReadHeaderFile(out.path() + "/adapter_model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->metadata.at("format"), "pt");
  EXPECT_EQ((*config)["target_modules"].size(), 7u);
  EXPECT_EQ(header->tensors.size(), 2u * 2 * 7);  // layers * {A,B} * modules
  // Shapes: A [r, in], B [out, r]; hidden 64, kv 32, intermediate 160.
  const std::map<std::string, std::pair<int64_t, int64_t>> in_out = {
      {"self_attn.q_proj", {64, 64}}, {"self_attn.k_proj", {64, 32}},
      {"self_attn.v_proj", {64, 32}}, {"self_attn.o_proj", {64, 64}},
      {"mlp.gate_proj", {64, 160}},   {"mlp.up_proj", {64, 160}},
      {"mlp.down_proj", {160, 64}}};
  for (const auto& [module, dims] : in_out) {
    const std::string p = "base_model.model.model.layers.1." + module;
    const safetensors::TensorInfo* a = header->Find(p + ".lora_A.weight");
    const safetensors::TensorInfo* b = header->Find(p + ".lora_B.weight");
    ASSERT_NE(a, nullptr) << p;
    ASSERT_NE(b, nullptr) << p;
    EXPECT_EQ(a->dtype, safetensors::Dtype::kF32);
    EXPECT_EQ(a->shape, (std::vector<int64_t>{8, dims.first}));
    EXPECT_EQ(b->shape, (std::vector<int64_t>{dims.second, 8}));
  }

  // The exported adapter loads back and changes the model's outputs.
  absl::StatusOr<std::unique_ptr<LlamaModel>> base =
      LlamaModel::Load(options.model.dir);
  absl::StatusOr<std::unique_ptr<LlamaModel>> tuned =
      LlamaModel::Load(options.model.dir);
  ASSERT_TRUE(base.ok() && tuned.ok());
  ASSERT_TRUE(LoadAdapter(**tuned, out.path()).ok());
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({{5, 6, 7, 8}}, torch::kInt64);
  torch::Tensor mask = torch::ones({1, 4}, torch::kInt64);
  EXPECT_GT(
      ((*tuned)->Forward(ids, mask, false) - (*base)->Forward(ids, mask, false))
          .abs()
          .max()
          .item<double>(),
      1e-3);
}

// adapter_config.json names the base by its Hugging Face id when the model
// folder's config.json gives one ("_name_or_path"), so that PEFT can load
// it; else by base_model_name (a lathed model name), as before. The
// checkpoints' adapters too.
TEST_F(TrainerTest, AdapterNamesTheBaseByItsHuggingFaceName) {
  auto base_name = [&](const nlohmann::json& name_or_path) {
    testing::TempDir dir;
    std::filesystem::copy(demo_->path() + "/model", dir.path() + "/model");
    absl::StatusOr<nlohmann::json> config =
        ReadJsonFile(dir.path() + "/model/config.json");
    EXPECT_TRUE(config.ok()) << config.status();
    (*config)["_name_or_path"] = name_or_path;
    std::ofstream(dir.path() + "/model/config.json") << config->dump();
    std::ifstream in(demo_->path() + "/train.jsonl");
    std::ofstream train(dir.path() + "/train.jsonl");
    std::string line;
    for (int i = 0; i < 4 && std::getline(in, line); ++i) train << line << "\n";
    train.close();
    RunSpec options = DemoOptions(dir.path() + "/out");
    options.model.dir = dir.path() + "/model";
    options.data.training_file = dir.path() + "/train.jsonl";
    options.data.validation_file = "";
    options.schedule.n_epochs = 1;
    options.checkpoint.every_steps = 1;
    options.checkpoint.dir = dir.path() + "/checkpoints";
    EXPECT_TRUE(Train(options, {}).ok());
    absl::StatusOr<nlohmann::json> adapter =
        ReadJsonFile(dir.path() + "/out/adapter_config.json");
    absl::StatusOr<nlohmann::json> checkpoint =
        ReadJsonFile(dir.path() + "/checkpoints/step-1/adapter_config.json");
    EXPECT_TRUE(adapter.ok() && checkpoint.ok());
    if (!adapter.ok() || !checkpoint.ok()) return std::string();
    EXPECT_EQ((*checkpoint)["base_model_name_or_path"],
              (*adapter)["base_model_name_or_path"]);
    return (*adapter)["base_model_name_or_path"].get<std::string>();
  };
  EXPECT_EQ(base_name("TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
  // A local path is no name PEFT can load: base_model_name instead.
  EXPECT_EQ(base_name("/home/me/models/tinyllama"), "lathe-demo-tiny-llama");
}

TEST_F(TrainerTest, SameSeedGivesSameLossCurve) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path());
  options.schedule.n_epochs = 1;
  Lora(options.adapter)->dropout = 0.1;  // dropout masks come from the seeded generator
  const std::vector<double> first = TrainLosses(options);
  const std::vector<double> second = TrainLosses(options);
  ASSERT_EQ(first.size(), 20u);
  EXPECT_EQ(first, second);
  options.seed = 43;
  EXPECT_NE(TrainLosses(options), first);
}

TEST_F(TrainerTest, CancelStopsWithoutCheckpoint) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/adapter");
  options.checkpoint.dir = out.path() + "/ckpt";
  int steps = 0;
  absl::StatusOr<TrainResult> result =
      Train(options, {.on_step = [&](const StepMetrics&) { ++steps; },
                      .should_stop =
                          [&] {
                            return steps >= 2 ? StopRequest::kCancel
                                              : StopRequest::kNone;
                          }});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(steps, 2);
  EXPECT_FALSE(std::filesystem::exists(options.checkpoint.dir));
  EXPECT_FALSE(std::filesystem::exists(options.output.dir));
}

TEST_F(TrainerTest, DivergingLossStopsWithNanLossNamingTheStep) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/adapter");
  options.optimizer.learning_rate = 1e30;  // the weights blow up after one update
  options.optimizer.max_grad_norm = 1e30;
  int steps = 0;
  absl::StatusOr<TrainResult> result =
      Train(options, {.on_step = [&](const StepMetrics&) { ++steps; }});
  ASSERT_EQ(result.status().code(), absl::StatusCode::kOutOfRange)
      << result.status();
  EXPECT_NE(result.status().message().find("nan_loss"),
            absl::string_view::npos);
  EXPECT_NE(result.status().message().find(absl::StrCat("at step ", steps + 1)),
            absl::string_view::npos)
      << result.status();
  EXPECT_FALSE(std::filesystem::exists(options.output.dir));
}

TEST_F(TrainerTest, BadOptionsAndFilesAreReported) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path());
  options.data.batch_size = 0;
  absl::StatusOr<TrainResult> result = Train(options, {});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("\"data.batch_size\""),
            std::string::npos);

  options = DemoOptions(out.path());
  options.objective = SftSpec{.loss_chunk_tokens = 0};
  result = Train(options, {});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("\"objective.loss_chunk_tokens\""),
            std::string::npos);

  options = DemoOptions(out.path());
  Lora(options.adapter)->target_modules = {"qkv"};
  EXPECT_EQ(Train(options, {}).status().code(),
            absl::StatusCode::kInvalidArgument);

  options = DemoOptions(out.path());
  options.model.dir = out.path() + "/none";
  EXPECT_EQ(Train(options, {}).status().code(), absl::StatusCode::kNotFound);

  options = DemoOptions(out.path());
  options.data.training_file = options.model.dir + "/config.json";
  result = Train(options, {});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("config.json: line 1"),
            std::string::npos)
      << result.status();
}

TEST_F(TrainerTest, InterruptedRunResumesToTheSameState) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/reference");
  options.schedule.n_epochs = 2;  // 40 steps; the stop falls mid-epoch
  Lora(options.adapter)->dropout = 0.1;
  const Run reference = TrainRun(options);
  ASSERT_TRUE(reference.result.ok()) << reference.result.status();
  ASSERT_EQ(reference.steps.size(), 40u);
  EXPECT_TRUE(reference.checkpoints.empty());

  options.output.dir = out.path() + "/interrupted";
  options.checkpoint.dir = out.path() + "/ckpt";
  const Run stopped = TrainRun(options, /*stop_after=*/13);
  EXPECT_EQ(stopped.result.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(stopped.result.status().message(),
            "stopped at step 13 after checkpointing");
  ASSERT_EQ(stopped.checkpoints.size(), 1u);
  const CheckpointInfo& checkpoint = stopped.checkpoints[0];
  EXPECT_EQ(checkpoint.step, 13);
  EXPECT_EQ(checkpoint.dir, options.checkpoint.dir + "/step-13");
  EXPECT_EQ(checkpoint.metrics.step, 13);
  EXPECT_EQ(checkpoint.metrics.loss, reference.steps[12].loss);
  EXPECT_EQ(checkpoint.files,
            (std::vector<std::string>{
                "adapter_config.json", "adapter_model.safetensors",
                "trainer_state.json", "trainer_state.safetensors"}));
  EXPECT_FALSE(std::filesystem::exists(checkpoint.dir + ".tmp"));
  // The checkpoint is itself a usable adapter.
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Load(options.model.dir);
  ASSERT_TRUE(model.ok());
  EXPECT_TRUE(LoadAdapter(**model, checkpoint.dir).ok());

  options.checkpoint.resume_from = checkpoint.dir;
  const Run resumed = TrainRun(options);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  ASSERT_EQ(resumed.steps.size(), 27u);
  EXPECT_EQ(resumed.steps[0].step, 14);
  std::vector<double> want = Tail(reference.losses(), 13);
  std::vector<double> got = resumed.losses();
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-6) << "step " << i + 14;
  }
  EXPECT_EQ(resumed.result->first_loss, reference.result->first_loss);
  EXPECT_EQ(resumed.result->trained_tokens, reference.result->trained_tokens);
  EXPECT_EQ(resumed.steps.back().trained_tokens,
            reference.steps.back().trained_tokens);
  EXPECT_LE(
      testing::MaxTensorDifference(out.path() + "/reference/adapter_model.safetensors",
                    out.path() + "/interrupted/adapter_model.safetensors"),
      1e-6);
}

TEST_F(TrainerTest, PeriodicCheckpointsResumeAcrossEpochs) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/reference");
  options.schedule.n_epochs = 3;
  options.optimizer.gradient_accumulation_steps = 2;  // 10 steps an epoch
  Lora(options.adapter)->dropout = 0.05;
  options.schedule.lr_scheduler = "cosine";
  options.schedule.warmup_steps = 2;
  options.optimizer.weight_decay = 0.01;
  options.checkpoint.every_steps = 7;
  options.checkpoint.dir = out.path() + "/ckpt";
  const Run reference = TrainRun(options);
  ASSERT_TRUE(reference.result.ok()) << reference.result.status();
  ASSERT_EQ(reference.steps.size(), 30u);
  ASSERT_EQ(reference.checkpoints.size(), 4u);
  EXPECT_EQ(reference.checkpoints[0].step, 7);
  EXPECT_EQ(reference.checkpoints[3].step, 28);
  for (const StepMetrics& m : reference.steps) {
    EXPECT_DOUBLE_EQ(m.learning_rate,
                     LearningRateAt(LrSchedule::kCosine, m.step - 1, 30, 2,
                                    options.optimizer.learning_rate));
  }

  // From the 2nd epoch into the 3rd, whose order the restored shuffle
  // generator decides.
  options.output.dir = out.path() + "/resumed";
  options.checkpoint.dir = out.path() + "/ckpt2";
  options.checkpoint.resume_from = out.path() + "/ckpt/step-14";
  const Run resumed = TrainRun(options);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  ASSERT_EQ(resumed.steps.size(), 16u);
  ASSERT_EQ(resumed.checkpoints.size(), 2u);
  EXPECT_EQ(resumed.checkpoints[0].step, 21);
  std::vector<double> want = Tail(reference.losses(), 14);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(resumed.losses()[i], want[i], 1e-6) << "step " << i + 15;
  }
  EXPECT_LE(testing::MaxTensorDifference(out.path() + "/reference/adapter_model.safetensors",
                          out.path() + "/resumed/adapter_model.safetensors"),
            1e-6);
  // The resumed run's own checkpoint matches the reference's.
  absl::StatusOr<TrainerState> a =
      ReadTrainerState(out.path() + "/ckpt/step-28");
  absl::StatusOr<TrainerState> b =
      ReadTrainerState(out.path() + "/ckpt2/step-28");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->epoch, 2);
  EXPECT_EQ(b->epoch, 2);
  EXPECT_EQ(a->cursor, b->cursor);
  EXPECT_EQ(a->data_rng, b->data_rng);
  EXPECT_EQ(a->data_order, b->data_order);
  EXPECT_TRUE(torch::equal(a->torch_rng, b->torch_rng));
  EXPECT_EQ(a->optimizer_steps, 28);
  EXPECT_EQ(b->optimizer_steps, 28);
  for (const auto& [name, t] : a->optimizer) {
    EXPECT_TRUE(torch::allclose(t, b->optimizer.at(name), 0, 1e-6)) << name;
  }
}

TEST_F(TrainerTest, ResumeRefusesChangedOptionsAndBadCheckpoints) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/adapter");
  options.schedule.n_epochs = 1;
  options.checkpoint.dir = out.path() + "/ckpt";
  const Run stopped = TrainRun(options, /*stop_after=*/2);
  ASSERT_EQ(stopped.result.status().code(), absl::StatusCode::kAborted);
  const std::string dir = out.path() + "/ckpt/step-2";

  auto resume_error = [&](RunSpec changed) {
    changed.checkpoint.resume_from = dir;
    return Train(changed, {}).status();
  };
  RunSpec changed = options;
  changed.data.batch_size = 8;
  absl::Status status = resume_error(changed);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("\"batch_size\""), std::string::npos)
      << status;
  changed = options;
  changed.seed = 7;
  EXPECT_NE(resume_error(changed).message().find("\"seed\""),
            std::string::npos);
  changed = options;
  Lora(changed.adapter)->rank = 4;
  EXPECT_NE(resume_error(changed).message().find("\"lora.rank\""),
            std::string::npos);
  changed = options;
  changed.data.max_seq_len = 64;
  EXPECT_NE(resume_error(changed).message().find("\"max_seq_len\""),
            std::string::npos);

  changed = options;
  changed.checkpoint.resume_from = out.path() + "/nowhere";
  status = Train(changed, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(status.message().find("trainer_state.json"), std::string::npos);

  std::ofstream(dir + "/trainer_state.safetensors") << "truncated";
  status = resume_error(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_NE(status.message().find("trainer_state.safetensors"),
            std::string::npos);
  std::filesystem::remove(dir + "/trainer_state.safetensors");
  status = resume_error(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_NE(status.message().find("trainer_state.safetensors"),
            std::string::npos);
  std::ofstream(dir + "/trainer_state.json") << "{\"step\": 2}";
  status = resume_error(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_NE(status.message().find("\"total_steps\""), std::string::npos);
}

TEST_F(TrainerTest, CheckpointRequestWithoutCheckpointDirIsRefused) {
  testing::TempDir out;
  const Run run = TrainRun(DemoOptions(out.path()), /*stop_after=*/1);
  EXPECT_EQ(run.result.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TrainerTest, GradientAccumulationMatchesTheLargerBatch) {
  // Right padding never reaches real tokens, so 2 micro-batches of 4 make
  // the same step as one batch of 8.
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/big");
  options.schedule.n_epochs = 1;
  options.data.batch_size = 8;
  const Run big = TrainRun(options);
  options.output.dir = out.path() + "/accumulated";
  options.data.batch_size = 4;
  options.optimizer.gradient_accumulation_steps = 2;
  const Run accumulated = TrainRun(options);
  ASSERT_TRUE(big.result.ok() && accumulated.result.ok());
  ASSERT_EQ(accumulated.steps.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_NEAR(accumulated.steps[i].loss, big.steps[i].loss, 1e-4);
    EXPECT_NEAR(accumulated.steps[i].grad_norm, big.steps[i].grad_norm, 1e-3);
  }
  EXPECT_LE(
      testing::MaxTensorDifference(out.path() + "/big/adapter_model.safetensors",
                    out.path() + "/accumulated/adapter_model.safetensors"),
      1e-4);
}

TEST_F(TrainerTest, PackingGivesTheUnpackedStepsWithoutPadding) {
  // The same examples per micro-batch, so the same loss each step (sum of
  // token losses / the step's targets) up to float32 rounding, which the
  // updates carry on; validation runs packed too.
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/padded");
  options.schedule.n_epochs = 1;
  options.data.packing = false;
  const Run padded = TrainRun(options);
  options.output.dir = out.path() + "/packed";
  options.data.packing = true;
  const Run packed = TrainRun(options);
  ASSERT_TRUE(padded.result.ok() && packed.result.ok());
  ASSERT_EQ(packed.steps.size(), 20u);
  EXPECT_NEAR(packed.steps[0].loss, padded.steps[0].loss,
              1e-5 * padded.steps[0].loss);
  for (size_t i = 0; i < 20; ++i) {
    EXPECT_NEAR(packed.steps[i].loss, padded.steps[i].loss, 1e-4) << i;
    EXPECT_EQ(packed.steps[i].token_accuracy, padded.steps[i].token_accuracy)
        << i;
  }
  EXPECT_NEAR(*packed.result->validation_loss, *padded.result->validation_loss,
              1e-4);
  EXPECT_EQ(packed.result->trained_tokens, padded.result->trained_tokens);
  EXPECT_EQ(packed.result->padding_tokens, 0);
  // The demo's conversations differ in length: padded batches carry pads.
  EXPECT_GT(padded.result->padding_tokens, padded.result->trained_tokens / 10);
  EXPECT_GT(packed.result->loss_peak_bytes, 0);
}

TEST_F(TrainerTest, ActivationCheckpointingGivesTheSameRun) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/plain");
  options.schedule.n_epochs = 1;
  Lora(options.adapter)->dropout = 0.1;  // the recompute must draw the same masks
  const Run plain = TrainRun(options);
  options.output.dir = out.path() + "/checkpointed";
  options.device.activation_checkpointing = true;
  const Run checkpointed = TrainRun(options);
  ASSERT_TRUE(plain.result.ok() && checkpointed.result.ok());
  ASSERT_EQ(checkpointed.steps.size(), 20u);
  for (size_t i = 0; i < 20; ++i) {
    EXPECT_NEAR(checkpointed.steps[i].loss, plain.steps[i].loss, 1e-5) << i;
    EXPECT_NEAR(checkpointed.steps[i].grad_norm, plain.steps[i].grad_norm, 1e-4)
        << i;
  }
  EXPECT_LE(
      testing::MaxTensorDifference(out.path() + "/plain/adapter_model.safetensors",
                    out.path() + "/checkpointed/adapter_model.safetensors"),
      1e-5);
}

TEST_F(TrainerTest, EvalEveryReportsValidationLossAndAccuracy) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path());
  options.schedule.n_epochs = 1;
  options.evaluation.every_steps = 6;
  const Run run = TrainRun(options);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  for (const StepMetrics& m : run.steps) {
    const bool evaluated = m.step % 6 == 0 || m.step == 20;
    EXPECT_EQ(m.validation_loss.has_value(), evaluated) << m.step;
    EXPECT_EQ(m.validation_accuracy.has_value(), evaluated) << m.step;
  }
  EXPECT_LT(*run.steps[19].validation_loss, *run.steps[5].validation_loss);
  EXPECT_GT(*run.steps[19].validation_accuracy, 0);
  EXPECT_EQ(run.result->validation_loss, run.steps[19].validation_loss);
}

TEST_F(TrainerTest, MergedExportMatchesBasePlusAdapter) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/adapter");
  options.schedule.n_epochs = 1;
  Lora(options.adapter)->use_rslora = true;
  options.output.merged_dir = out.path() + "/merged";
  ASSERT_TRUE(TrainRun(options).result.ok());
  absl::StatusOr<nlohmann::json> config =
      ReadJsonFile(out.path() + "/adapter/adapter_config.json");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["use_rslora"], true);
  for (const char* file : {"config.json", "tokenizer.model",
                           "tokenizer_config.json", "model.safetensors"}) {
    EXPECT_TRUE(std::filesystem::exists(out.path() + "/merged/" + file))
        << file;
  }
  absl::StatusOr<std::unique_ptr<LlamaModel>> adapted =
      LlamaModel::Load(options.model.dir);
  absl::StatusOr<std::unique_ptr<LlamaModel>> merged =
      LlamaModel::Load(out.path() + "/merged");
  ASSERT_TRUE(adapted.ok() && merged.ok());
  absl::StatusOr<LoraSpec> lora =
      LoadAdapter(**adapted, out.path() + "/adapter");
  ASSERT_TRUE(lora.ok()) << lora.status();
  EXPECT_DOUBLE_EQ((*adapted)->layers()[0].q_proj.lora_scale,
                   16.0 / std::sqrt(8.0));
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({{5, 6, 7, 8, 9}}, torch::kInt64);
  torch::Tensor mask = torch::ones({1, 5}, torch::kInt64);
  EXPECT_TRUE(torch::allclose((*merged)->Forward(ids, mask, false),
                              (*adapted)->Forward(ids, mask, false), 1e-4,
                              1e-4));
}

TEST_F(TrainerTest, FullFineTuningResumesAndExportsInTheSourceDtype) {
  testing::TempDir out;
  // A bfloat16 copy of the demo model.
  const std::string source = out.path() + "/bf16";
  {
    absl::StatusOr<std::unique_ptr<LlamaModel>> demo =
        LlamaModel::Load(demo_->path() + "/model");
    ASSERT_TRUE(demo.ok());
    ASSERT_TRUE(SaveModelFolder(**demo, demo_->path() + "/model", source,
                                torch::kBFloat16)
                    .ok());
  }
  RunSpec options = DemoOptions(out.path() + "/reference");
  options.model.dir = source;
  options.adapter = FullSpec{};
  options.schedule.n_epochs = 1;
  options.optimizer.learning_rate = 1e-3;
  options.optimizer.weight_decay = 0.01;
  const Run reference = TrainRun(options);
  ASSERT_TRUE(reference.result.ok()) << reference.result.status();
  EXPECT_LT(Mean(reference.losses(), 15, 20), Mean(reference.losses(), 0, 3));

  absl::StatusOr<safetensors::Header> header =
      safetensors::ReadHeaderFile(out.path() + "/reference/model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors[0].dtype, safetensors::Dtype::kBF16);
  for (const char* file :
       {"config.json", "tokenizer.model", "tokenizer_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(out.path() + "/reference/" + file))
        << file;
  }
  absl::StatusOr<std::unique_ptr<LlamaModel>> tuned =
      LlamaModel::Load(out.path() + "/reference");
  ASSERT_TRUE(tuned.ok()) << tuned.status();

  options.output.dir = out.path() + "/resumed";
  options.checkpoint.dir = out.path() + "/ckpt";
  const Run stopped = TrainRun(options, /*stop_after=*/6);
  ASSERT_EQ(stopped.result.status().code(), absl::StatusCode::kAborted);
  ASSERT_EQ(stopped.checkpoints.size(), 1u);
  EXPECT_EQ(stopped.checkpoints[0].files,
            (std::vector<std::string>{
                "config.json", "model.safetensors", "tokenizer.model",
                "tokenizer_config.json", "trainer_state.json",
                "trainer_state.safetensors"}));
  options.checkpoint.resume_from = stopped.checkpoints[0].dir;
  const Run resumed = TrainRun(options);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  std::vector<double> want = Tail(reference.losses(), 6);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(resumed.losses()[i], want[i], 1e-6) << "step " << i + 7;
  }
  EXPECT_EQ(testing::MaxTensorDifference(out.path() + "/reference/model.safetensors",
                          out.path() + "/resumed/model.safetensors"),
            0);
}

// Mixed precision on the CPU: a bf16 LoRA run's loss curve tracks the
// float32 one step by step, while the adapter's factors and AdamW's moments
// stay float32 (the exported adapter is float32).
TEST_F(TrainerTest, Bf16LoraRunTracksTheFloat32LossCurve) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/fp32");
  options.schedule.n_epochs = 1;
  options.device.device = "cpu";
  const std::vector<double> fp32 = TrainLosses(options);
  options.output.dir = out.path() + "/bf16";
  options.device.dtype = "bfloat16";
  const std::vector<double> bf16 = TrainLosses(options);
  ASSERT_EQ(bf16.size(), fp32.size());
  ASSERT_GE(fp32.size(), 10u);
  double max_relative = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    max_relative =
        std::max(max_relative, std::abs(bf16[i] - fp32[i]) / fp32[i]);
  }
  EXPECT_LT(max_relative, 0.03);
  EXPECT_GT(max_relative, 1e-6) << "bf16 did not run";
  EXPECT_LT(Mean(bf16, fp32.size() - 3, fp32.size()), Mean(bf16, 0, 3));
  absl::StatusOr<safetensors::Header> header = safetensors::ReadHeaderFile(
      out.path() + "/bf16/adapter_model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors[0].dtype, safetensors::Dtype::kF32);
}

TEST_F(TrainerTest, Bf16FullFineTuningKeepsFloat32MastersAndTracksFloat32) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/fp32");
  options.adapter = FullSpec{};
  options.schedule.n_epochs = 1;
  options.optimizer.learning_rate = 1e-3;
  options.checkpoint.every_steps = 5;
  options.checkpoint.dir = out.path() + "/ckpt32";
  const Run fp32 = TrainRun(options);
  ASSERT_TRUE(fp32.result.ok()) << fp32.result.status();
  options.output.dir = out.path() + "/bf16";
  options.checkpoint.dir = out.path() + "/ckpt16";
  options.device.dtype = "bfloat16";
  const Run bf16 = TrainRun(options);
  ASSERT_TRUE(bf16.result.ok()) << bf16.result.status();
  ASSERT_EQ(bf16.steps.size(), fp32.steps.size());
  for (size_t i = 0; i < fp32.steps.size(); ++i) {
    EXPECT_NEAR(bf16.steps[i].loss, fp32.steps[i].loss,
                0.03 * fp32.steps[i].loss)
        << "step " << i + 1;
  }
  // The checkpoint holds the float32 masters and moments: updates smaller
  // than bf16's resolution are kept, not rounded away.
  absl::StatusOr<TrainerState> state =
      ReadTrainerState(out.path() + "/ckpt16/step-5");
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_FALSE(state->optimizer.empty());
  for (const auto& [name, tensor] : state->optimizer) {
    EXPECT_EQ(tensor.scalar_type(), torch::kFloat32) << name;
  }
  absl::StatusOr<TensorMap> weights =
      LoadSafetensors(out.path() + "/ckpt16/step-5/model.safetensors");
  ASSERT_TRUE(weights.ok());
  const torch::Tensor w =
      weights->at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(torch::equal(w, w.to(torch::kBFloat16).to(torch::kFloat32)))
      << "the masters were rounded to bf16";
}

TEST_F(TrainerTest, AMissingCudaDeviceIsAPlatformErrorNamingTheDevice) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "this machine has CUDA";
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path());
  options.device.device = "cuda";
  const absl::Status status = Train(options, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_EQ(ErrorKindOf(status), ErrorKind::kPlatform);
  EXPECT_EQ(status.message().rfind("device.device: cuda", 0), 0u) << status;
}

// Writes lines [begin, end) of `from` to `to`.
void CopyLines(const std::string& from, const std::string& to, int begin,
               int end) {
  std::ifstream in(from);
  std::ofstream out(to);
  int i = 0;
  for (std::string line; std::getline(in, line); ++i) {
    if (i >= begin && i < end) out << line << "\n";
  }
}

// A weighted mixture of two halves of the demo data with the validation
// file as a general-data regulariser: the epoch is the plan's
// (first_exhausted: min(48 / 0.7, 32 / 0.3) = 68 draws, plus
// round(0.2 / 0.8 * 68) = 17 general examples: 85, 22 steps), each
// source's validation loss is reported, and a stopped run resumes to the
// same draws and losses.
TEST_F(TrainerTest, MixtureRunReportsEachSourceAndResumesToTheSameDraws) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/reference");
  const std::string train = options.data.training_file;
  const std::string valid = options.data.validation_file;
  CopyLines(train, out.path() + "/a.jsonl", 0, 48);
  CopyLines(train, out.path() + "/b.jsonl", 48, 80);
  CopyLines(valid, out.path() + "/b-valid.jsonl", 0, 5);
  options.data.training_file.clear();
  options.data.validation_file.clear();
  options.data.mixture = {
      .sources = {{.name = "a",
                   .file = out.path() + "/a.jsonl",
                   .validation_file = valid,
                   .weight = 0.7},
                  {.name = "b",
                   .file = out.path() + "/b.jsonl",
                   .validation_file = out.path() + "/b-valid.jsonl",
                   .weight = 0.3},
                  {.name = "general", .file = valid, .proportion = 0.2}},
      .strategy = "weighted"};
  options.schedule.n_epochs = 1;
  options.evaluation.every_steps = 11;
  ASSERT_TRUE(ValidateRunSpec(options).ok()) << ValidateRunSpec(options);
  const Run reference = TrainRun(options);
  ASSERT_TRUE(reference.result.ok()) << reference.result.status();
  ASSERT_EQ(reference.steps.size(), 22u);
  for (const StepMetrics& m : reference.steps) {
    EXPECT_EQ(m.values.count("valid_loss/a"), m.step % 11 == 0 ? 1u : 0u);
    EXPECT_EQ(m.values.count("valid_loss/b"), m.step % 11 == 0 ? 1u : 0u);
    EXPECT_EQ(m.values.count("valid_loss/general"), 0u);
  }
  const StepMetrics& last = reference.steps.back();
  const double a = last.values.at("valid_loss/a");
  const double b = last.values.at("valid_loss/b");
  EXPECT_NE(a, b);
  ASSERT_TRUE(last.validation_loss.has_value());  // over a's and b's files
  EXPECT_GT(*last.validation_loss, std::min(a, b));
  EXPECT_LT(*last.validation_loss, std::max(a, b));
  EXPECT_EQ(reference.result->validation_loss, last.validation_loss);

  options.output.dir = out.path() + "/interrupted";
  options.checkpoint.dir = out.path() + "/ckpt";
  const Run stopped = TrainRun(options, /*stop_after=*/9);
  ASSERT_EQ(stopped.checkpoints.size(), 1u);
  options.checkpoint.resume_from = stopped.checkpoints[0].dir;
  const Run resumed = TrainRun(options);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  ASSERT_EQ(resumed.steps.size(), 13u);
  const std::vector<double> want = Tail(reference.losses(), 9);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(resumed.losses()[i], want[i], 1e-6) << "step " << i + 10;
  }
  EXPECT_EQ(resumed.result->trained_tokens, reference.result->trained_tokens);
  // Another weight is another plan: the checkpoint is refused.
  options.data.mixture.sources[0].weight = 0.6;
  EXPECT_EQ(TrainRun(options).result.status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// DMT (METHODS.md §2.2): stage 1 on the specialised sources, stage 2 on
// the general data plus a k = 1/4 subsample of each. The two-stage run is
// exactly stage 1 as a run of its own followed by stage 2 as a run of its
// own from stage 1's exported weights (a fresh optimizer, warmup and
// schedule again, the same seeded data order): the same losses, learning
// rates and final weights. A run stopped inside stage 2, or exactly at the
// end of stage 1, resumes to the same weights.
TEST_F(TrainerTest, DmtStagesRunAsSeparateRunsFromTheLastWeightsAndResume) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/staged");
  const std::string train = options.data.training_file;
  const std::string general = options.data.validation_file;  // 16 lines
  CopyLines(train, out.path() + "/math.jsonl", 0, 48);
  CopyLines(train, out.path() + "/code.jsonl", 48, 80);
  options.data.training_file.clear();
  options.data.validation_file.clear();
  options.adapter = FullSpec{};
  options.schedule.n_epochs = 1;
  options.schedule.warmup_steps = 2;
  options.optimizer.learning_rate = 1e-3;
  const MixtureSpec specialised = {
      .sources = {{.name = "math", .file = out.path() + "/math.jsonl"},
                  {.name = "code", .file = out.path() + "/code.jsonl"}}};
  MixtureSpec second = {.sources = {{.name = "general", .file = general}}};
  for (MixtureSourceSpec source : specialised.sources) {
    source.fraction = 0.25;
    second.sources.push_back(source);
  }
  const int batch = options.data.batch_size;
  const size_t first_steps = (80 + batch - 1) / batch;
  // |general| + floor(48 / 4) + floor(32 / 4) examples.
  const size_t second_steps = (16 + 12 + 8 + batch - 1) / batch;

  RunSpec stage1 = options;
  stage1.data.mixture = specialised;
  stage1.output.dir = out.path() + "/stage1";
  const Run one = TrainRun(stage1);
  ASSERT_TRUE(one.result.ok()) << one.result.status();
  ASSERT_EQ(one.steps.size(), first_steps);
  RunSpec stage2 = options;
  stage2.model.dir = stage1.output.dir;
  stage2.data.mixture = second;
  stage2.output.dir = out.path() + "/stage2";
  const Run two = TrainRun(stage2);
  ASSERT_TRUE(two.result.ok()) << two.result.status();
  ASSERT_EQ(two.steps.size(), second_steps);

  options.data.stages = {{.name = "specialised", .mixture = specialised},
                         {.name = "general", .mixture = second}};
  ASSERT_TRUE(ValidateRunSpec(options).ok()) << ValidateRunSpec(options);
  const Run staged = TrainRun(options);
  ASSERT_TRUE(staged.result.ok()) << staged.result.status();
  ASSERT_EQ(staged.steps.size(), first_steps + second_steps);
  for (size_t i = 0; i < staged.steps.size(); ++i) {
    const bool first = i < first_steps;
    const StepMetrics& want =
        first ? one.steps[i] : two.steps[i - first_steps];
    const StepMetrics& got = staged.steps[i];
    EXPECT_EQ(got.step, static_cast<int64_t>(i + 1));
    EXPECT_EQ(got.total_steps,
              static_cast<int64_t>(first_steps + second_steps));
    EXPECT_EQ(got.stage, first ? 1 : 2) << "step " << i + 1;
    EXPECT_NEAR(got.loss, want.loss, 1e-6) << "step " << i + 1;
    EXPECT_DOUBLE_EQ(got.learning_rate, want.learning_rate)
        << "step " << i + 1;
  }
  // Warmup again at the start of stage 2.
  EXPECT_DOUBLE_EQ(staged.steps[first_steps].learning_rate,
                   staged.steps[0].learning_rate);
  EXPECT_EQ(testing::MaxTensorDifference(out.path() + "/staged/model.safetensors",
                          out.path() + "/stage2/model.safetensors"),
            0);

  // Stopped inside stage 2, and at the end of stage 1.
  for (const size_t stop : {first_steps + 2, first_steps}) {
    SCOPED_TRACE(absl::StrCat("stopped after step ", stop));
    RunSpec again = options;
    again.output.dir = out.path() + absl::StrCat("/resumed-", stop);
    again.checkpoint.dir = out.path() + absl::StrCat("/ckpt-", stop);
    const Run stopped = TrainRun(again, static_cast<int>(stop));
    ASSERT_EQ(stopped.result.status().code(), absl::StatusCode::kAborted);
    ASSERT_EQ(stopped.checkpoints.size(), 1u);
    again.checkpoint.resume_from = stopped.checkpoints[0].dir;
    const Run resumed = TrainRun(again);
    ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
    ASSERT_EQ(resumed.steps.size(), first_steps + second_steps - stop);
    EXPECT_EQ(resumed.steps[0].stage, stop < first_steps ? 1 : 2);
    EXPECT_NEAR(resumed.steps[0].loss, staged.steps[stop].loss, 1e-6);
    EXPECT_EQ(testing::MaxTensorDifference(out.path() + "/staged/model.safetensors",
                            again.output.dir + "/model.safetensors"),
              0);
  }

  // A stage without data is refused naming it; stages are for SFT.
  RunSpec bad = options;
  bad.data.stages[1].mixture.sources.clear();
  EXPECT_NE(ValidateRunSpec(bad).message().find("data.stages[1].mixture.sources"), std::string::npos)
      << ValidateRunSpec(bad);
  bad = options;
  bad.data.training_file = train;
  EXPECT_NE(ValidateRunSpec(bad).message().find("data.training_file"), std::string::npos)
      << ValidateRunSpec(bad);
  bad = options;
  bad.objective = DpoSpec{};
  EXPECT_NE(ValidateRunSpec(bad).message().find("data.stages"), std::string::npos)
      << ValidateRunSpec(bad);
}

// The forgetting report (METHODS.md §9.1) on a LoRA run with the demo's
// validation file as the general set: "before" equals the base model's
// score loss over the file (ScoreExample, one example at a time, weighted
// by its trained tokens), "after" differs once trained, a learning rate of
// 0 gives delta 0 exactly, and a resumed run reports the uninterrupted
// run's "before". Every adapted matrix has its intruder count.
TEST_F(TrainerTest, ForgettingReportAndIntruderDimensions) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/trained");
  options.schedule.n_epochs = 1;
  options.evaluation.general_file = options.data.validation_file;
  options.data.validation_file.clear();

  // The independent "before": the base model scoring each example.
  absl::StatusOr<std::unique_ptr<LlamaModel>> base =
      LlamaModel::Load(options.model.dir);
  ASSERT_TRUE(base.ok());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(options.model.dir);
  ASSERT_TRUE(tokenizer.ok());
  absl::StatusOr<Dataset> general = LoadChatDataset(
      options.evaluation.general_file, **tokenizer,
      ChatTemplateFor(**tokenizer, options.model.chat_template),
      options.data.max_seq_len, "general");
  ASSERT_TRUE(general.ok()) << general.status();
  double sum = 0;
  int64_t tokens = 0;
  for (const Example& e : general->examples) {
    absl::StatusOr<Scores> scores = ScoreExample(**base, e);
    ASSERT_TRUE(scores.ok()) << scores.status();
    int64_t n = 0;
    for (size_t t = 1; t < e.loss_mask.size(); ++t) n += e.loss_mask[t];
    sum += scores->loss * n;
    tokens += n;
  }

  const Run trained = TrainRun(options);
  ASSERT_TRUE(trained.result.ok()) << trained.result.status();
  ASSERT_TRUE(trained.result->forgetting.has_value());
  const ForgettingReport& report = *trained.result->forgetting;
  EXPECT_NEAR(report.loss_before, sum / tokens, 1e-5);
  EXPECT_EQ(report.tokens, tokens);
  EXPECT_EQ(report.tokens_counted, "assistant");
  EXPECT_GT(std::abs(report.delta()), 1e-4);
  EXPECT_DOUBLE_EQ(report.ppl_ratio(), std::exp(report.delta()));
  const size_t adapted =
      (*base)->layers().size() * Lora(options.adapter)->target_modules.size();
  ASSERT_EQ(trained.result->intruders.size(), adapted);
  EXPECT_EQ(trained.result->intruders[0].name,
            "model.layers.0.self_attn.q_proj.weight");
  for (const IntruderMatrix& m : trained.result->intruders) {
    EXPECT_GE(m.intruders, 0);
    EXPECT_LE(m.min_similarity, 1 + 1e-6);
  }

  RunSpec still = options;
  still.output.dir = out.path() + "/still";
  still.optimizer.learning_rate = 0;
  const Run unchanged = TrainRun(still);
  ASSERT_TRUE(unchanged.result.ok()) << unchanged.result.status();
  EXPECT_EQ(unchanged.result->forgetting->delta(), 0);
  for (const IntruderMatrix& m : unchanged.result->intruders) {
    EXPECT_EQ(m.intruders, 0) << m.name;  // W_ft = W0
  }

  RunSpec again = options;
  again.output.dir = out.path() + "/resumed";
  again.checkpoint.dir = out.path() + "/ckpt";
  const Run stopped = TrainRun(again, /*stop_after=*/5);
  ASSERT_EQ(stopped.checkpoints.size(), 1u);
  again.checkpoint.resume_from = stopped.checkpoints[0].dir;
  const Run resumed = TrainRun(again);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  ASSERT_TRUE(resumed.result->forgetting.has_value());
  EXPECT_EQ(resumed.result->forgetting->loss_before, report.loss_before);
  EXPECT_NEAR(resumed.result->forgetting->loss_after, report.loss_after, 1e-6);

  // A general file that does not parse is the user's data, named.
  std::ofstream(out.path() + "/bad.jsonl") << "{not json\n";
  options.evaluation.general_file = out.path() + "/bad.jsonl";
  const absl::Status bad = TrainRun(options).result.status();
  EXPECT_EQ(ErrorKindOf(bad), ErrorKind::kUserData) << bad;
  EXPECT_EQ(ErrorFieldOf(bad), "general_file") << bad;
}

// Intruder mitigation on a run (§9.2): with epsilon 1 every top singular
// vector counts as an intruder, so every adapted matrix is re-factorised;
// the exported adapter is the mitigated one (its s B A equals the
// mitigation of the unmitigated run's, computed again here from that
// run's adapter), and the forgetting report's "after" is of it.
TEST_F(TrainerTest, IntruderMitigationExportsTheMitigatedAdapter) {
  testing::TempDir out;
  RunSpec plain = DemoOptions(out.path() + "/plain");
  plain.schedule.n_epochs = 1;
  plain.evaluation.intruder_epsilon = 1;
  const Run unmitigated = TrainRun(plain);
  ASSERT_TRUE(unmitigated.result.ok()) << unmitigated.result.status();
  EXPECT_FALSE(unmitigated.result->intruders_mitigated.has_value());

  RunSpec mitigated = plain;
  mitigated.output.dir = out.path() + "/mitigated";
  mitigated.evaluation.intruder_mitigation_lambda = 0.5;
  const Run run = TrainRun(mitigated);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  const LoraSpec& lora = *Lora(plain.adapter);
  ASSERT_TRUE(run.result->intruders_mitigated.has_value());
  EXPECT_EQ(*run.result->intruders_mitigated,
            static_cast<int>(run.result->intruders.size()));

  absl::StatusOr<TensorMap> base = LoadSafetensors(plain.model.dir + "/model.safetensors");
  absl::StatusOr<TensorMap> before = LoadSafetensors(plain.output.dir + "/adapter_model.safetensors");
  absl::StatusOr<TensorMap> after = LoadSafetensors(mitigated.output.dir + "/adapter_model.safetensors");
  ASSERT_TRUE(base.ok() && before.ok() && after.ok());
  const std::string key = "model.layers.0.self_attn.q_proj";
  const std::string peft = "base_model.model." + key;
  const MitigatedFactors want = MitigateIntruderFactors(
      base->at(key + ".weight"), before->at(peft + ".lora_B.weight"),
      before->at(peft + ".lora_A.weight"), LoraScale(lora), 10, 1.0, 0.5, lora.rank);
  EXPECT_GT(want.intruders, 0);
  EXPECT_TRUE(torch::allclose(after->at(peft + ".lora_B.weight").matmul(after->at(peft + ".lora_A.weight")),
                              want.b.matmul(want.a), 1e-4, 1e-6));
  EXPECT_FALSE(torch::allclose(after->at(peft + ".lora_B.weight"), before->at(peft + ".lora_B.weight")));

  RunSpec dora = mitigated;
  Lora(dora.adapter)->use_dora = true;
  EXPECT_NE(ValidateRunSpec(dora).message().find("evaluation.intruder_mitigation_lambda"),
            std::string::npos);
}

// Masked Thought changes the steps' losses (the inputs are masked, the
// targets are not), a stopped run resumes to the same masks, and a mask id
// beyond the vocabulary is the user's option error.
TEST_F(TrainerTest, MaskedThoughtRunResumesToTheSameMasks) {
  testing::TempDir out;
  RunSpec options = DemoOptions(out.path() + "/plain");
  options.schedule.n_epochs = 1;
  const std::vector<double> plain = TrainLosses(options);
  std::get<SftSpec>(options.objective).masked_thought = {
      .mask_rate = 0.5, .schedule = "constant"};
  options.output.dir = out.path() + "/reference";
  const Run reference = TrainRun(options);
  ASSERT_TRUE(reference.result.ok()) << reference.result.status();
  ASSERT_EQ(reference.steps.size(), plain.size());
  EXPECT_GT(std::abs(reference.steps[0].loss - plain[0]), 1e-3);

  options.output.dir = out.path() + "/interrupted";
  options.checkpoint.dir = out.path() + "/ckpt";
  const Run stopped = TrainRun(options, /*stop_after=*/7);
  ASSERT_EQ(stopped.checkpoints.size(), 1u);
  options.checkpoint.resume_from = stopped.checkpoints[0].dir;
  const Run resumed = TrainRun(options);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  const std::vector<double> want = Tail(reference.losses(), 7);
  ASSERT_EQ(resumed.steps.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(resumed.losses()[i], want[i], 1e-6) << "step " << i + 8;
  }

  options.checkpoint = {};
  std::get<SftSpec>(options.objective).masked_thought.mask_token = "999999";
  const absl::Status bad = TrainRun(options).result.status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_EQ(ErrorKindOf(bad), ErrorKind::kUserOptions) << bad;
}

}  // namespace
}  // namespace lathe::engine
