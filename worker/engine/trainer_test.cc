#include "worker/engine/trainer.h"

#include <map>
#include <numeric>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/demo.h"
#include "worker/engine/json_file.h"
#include "worker/engine/llama.h"
#include "worker/engine/lora.h"
#include "worker/engine/test_util.h"
#include "worker/engine/train_spec.h"

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
  static TrainOptions DemoOptions(const std::string& out) {
    absl::StatusOr<nlohmann::json> spec =
        ReadJsonFile(demo_->path() + "/spec.json");
    EXPECT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<TrainOptions> options = ParseTrainSpec(*spec, demo_->path());
    EXPECT_TRUE(options.ok()) << options.status();
    options->output_dir = out;
    return *options;
  }

  // Trains and returns every step's loss.
  static std::vector<double> TrainLosses(const TrainOptions& options,
                                         TrainResult* result = nullptr) {
    std::vector<double> losses;
    absl::StatusOr<TrainResult> r = Train(
        options, [&](const StepMetrics& m) { losses.push_back(m.loss); },
        nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok() && result != nullptr) *result = *r;
    return losses;
  }

  static testing::TempDir* demo_;
};
testing::TempDir* TrainerTest::demo_ = nullptr;

double Mean(const std::vector<double>& v, size_t begin, size_t end) {
  return std::accumulate(v.begin() + begin, v.begin() + end, 0.0) /
         (end - begin);
}

TEST_F(TrainerTest, LossFallsAndAdapterIsExportedInPeftLayout) {
  testing::TempDir out;
  TrainOptions options = DemoOptions(out.path());
  std::vector<StepMetrics> steps;
  absl::StatusOr<TrainResult> result = Train(
      options, [&](const StepMetrics& m) { steps.push_back(m); }, nullptr);
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
      LlamaModel::Load(options.model_dir);
  absl::StatusOr<std::unique_ptr<LlamaModel>> tuned =
      LlamaModel::Load(options.model_dir);
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

TEST_F(TrainerTest, SameSeedGivesSameLossCurve) {
  testing::TempDir out;
  TrainOptions options = DemoOptions(out.path());
  options.n_epochs = 1;
  options.lora.dropout = 0.1;  // dropout masks come from the seeded generator
  const std::vector<double> first = TrainLosses(options);
  const std::vector<double> second = TrainLosses(options);
  ASSERT_EQ(first.size(), 20u);
  EXPECT_EQ(first, second);
  options.seed = 43;
  EXPECT_NE(TrainLosses(options), first);
}

TEST_F(TrainerTest, StopCheckCancels) {
  testing::TempDir out;
  int steps = 0;
  absl::StatusOr<TrainResult> result = Train(
      DemoOptions(out.path()), [&](const StepMetrics&) { ++steps; },
      [&] { return steps >= 2; });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(steps, 2);
}

TEST_F(TrainerTest, BadOptionsAndFilesAreReported) {
  testing::TempDir out;
  TrainOptions options = DemoOptions(out.path());
  options.batch_size = 0;
  absl::StatusOr<TrainResult> result = Train(options, nullptr, nullptr);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("\"batch_size\""),
            std::string::npos);

  options = DemoOptions(out.path());
  options.lora.target_modules = {"qkv"};
  EXPECT_EQ(Train(options, nullptr, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);

  options = DemoOptions(out.path());
  options.model_dir = out.path() + "/none";
  EXPECT_EQ(Train(options, nullptr, nullptr).status().code(),
            absl::StatusCode::kNotFound);

  options = DemoOptions(out.path());
  options.training_file = options.model_dir + "/config.json";
  result = Train(options, nullptr, nullptr);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("config.json:1"), std::string::npos)
      << result.status();
}

}  // namespace
}  // namespace lathe::engine
