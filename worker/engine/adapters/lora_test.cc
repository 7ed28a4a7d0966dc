// DoRA and layers_to_transform (the LoRA basics are tested in
// model/llama_test.cc).
#include "worker/engine/adapters/lora.h"

#include <filesystem>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/model/random_model_test_util.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using testing::RandomWeights;
using testing::TinyConfig;

const std::vector<std::string> kAll = {"q_proj",   "k_proj",    "v_proj",
                                       "o_proj",   "gate_proj", "up_proj",
                                       "down_proj"};

// DoRA's weight written out with basic tensor ops: m * W' / ||W'|| per
// output row, W' = W + scale B A.
torch::Tensor ReferenceDoraWeight(const torch::Tensor& w,
                                  const torch::Tensor& a,
                                  const torch::Tensor& b,
                                  const torch::Tensor& m, double scale) {
  const torch::Tensor adapted = w + scale * torch::mm(b, a);
  const torch::Tensor norm = (adapted * adapted).sum(1).sqrt();
  return adapted * (m / norm).unsqueeze(1);
}

class DoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(5);
    weights_ = RandomWeights(TinyConfig());
    model_ = Make();
    options_ = {
        .rank = 4, .alpha = 8, .target_modules = kAll, .use_dora = true};
    ASSERT_TRUE(AttachLora(*model_, options_).ok());
  }
  std::unique_ptr<LlamaModel> Make() const {
    return *LlamaModel::FromTensors(TinyConfig(), weights_, "random");
  }
  // Random B and magnitudes, so that the adapter changes every projection.
  void Perturb() {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : LoraParameters(*model_)) {
      if (name.find("lora_B") != std::string::npos) p.normal_(0, 0.3);
      if (name.find("magnitude") != std::string::npos) {
        p.mul_(1 + 0.2 * torch::randn_like(p));
      }
    }
  }
  torch::Tensor Logits(const LlamaModel& model) const {
    torch::NoGradGuard no_grad;
    return model.Forward(ids_, torch::ones_like(ids_), false);
  }

  TensorMap weights_;
  std::unique_ptr<LlamaModel> model_;
  LoraSpec options_;
  const torch::Tensor ids_ =
      torch::tensor({{3, 1, 4, 1, 5, 9, 2, 6}}, torch::kInt64);
};

TEST_F(DoraTest, StartsAsTheBaseWithMagnitudesTheRowNormsOfW) {
  const Linear& q = model_->layers()[0].q_proj;
  EXPECT_TRUE(torch::allclose(
      q.lora_magnitude,
      weights_.at("model.layers.0.self_attn.q_proj.weight").norm(2, {1})));
  EXPECT_TRUE(q.lora_magnitude.requires_grad());
  EXPECT_TRUE(torch::allclose(Logits(*model_), Logits(*Make()), 1e-5, 1e-5));
}

// The adapted model's logits equal those of the plain model whose every
// projection weight is the reference DoRA weight; so do the merged weights.
TEST_F(DoraTest, LogitsAndMergedWeightsMatchAPlainReference) {
  Perturb();
  TensorMap merged = weights_;
  for (size_t i = 0; i < 2; ++i) {
    for (const std::string& module : kAll) {
      const Linear& l = *model_->layers()[i].Projection(module);
      const std::string key = "model.layers." + std::to_string(i) + "." +
                              std::string(ProjectionGroup(module)) + "." +
                              module + ".weight";
      merged[key] = ReferenceDoraWeight(weights_.at(key), l.lora_a.detach(),
                                        l.lora_b.detach(),
                                        l.lora_magnitude.detach(), 2.0);
      EXPECT_TRUE(torch::allclose(model_->Weights(true).at(key), merged[key],
                                  1e-5, 1e-6))
          << key;
    }
  }
  std::unique_ptr<LlamaModel> reference =
      *LlamaModel::FromTensors(TinyConfig(), merged, "reference");
  const torch::Tensor got = Logits(*model_);
  EXPECT_TRUE(torch::allclose(got, Logits(*reference), 1e-4, 1e-5));
  EXPECT_FALSE(torch::allclose(got, Logits(*Make()), 1e-2, 1e-2));
}

// With dropout, PEFT's terms: x W^T + (g - 1) dropout(x) W^T + g s
// dropout(x) A^T B^T + b, the norm in g without gradient.
TEST_F(DoraTest, DropoutAndGradientsFollowPeftsTerms) {
  torch::manual_seed(7);
  Linear l;
  l.weight = torch::randn({6, 5});
  l.bias = torch::randn({6});
  l.lora_a = torch::randn({2, 5}).requires_grad_(true);
  l.lora_b = torch::randn({6, 2}).requires_grad_(true);
  l.lora_magnitude = (torch::rand({6}) + 0.5).requires_grad_(true);
  l.lora_scale = 1.5;
  l.lora_dropout = 0.3;
  const torch::Tensor x = torch::randn({4, 5});
  torch::manual_seed(11);
  const torch::Tensor y = l.Forward(x, /*training=*/true);
  y.pow(2).sum().backward();
  const torch::Tensor grad_a = l.lora_a.grad().clone(),
                      grad_m = l.lora_magnitude.grad().clone();

  torch::Tensor a = l.lora_a.detach().clone().requires_grad_(true);
  torch::Tensor b = l.lora_b.detach().clone().requires_grad_(true);
  torch::Tensor m = l.lora_magnitude.detach().clone().requires_grad_(true);
  torch::manual_seed(11);
  const torch::Tensor d = torch::dropout(x, 0.3, true);
  const torch::Tensor norm =
      (l.weight + 1.5 * torch::mm(b, a)).detach().pow(2).sum(1).sqrt();
  const torch::Tensor g = m / norm;
  const torch::Tensor want =
      torch::mm(x, l.weight.t()) + (g - 1) * torch::mm(d, l.weight.t()) +
      g * 1.5 * torch::mm(torch::mm(d, a.t()), b.t()) + l.bias;
  EXPECT_TRUE(torch::allclose(y, want, 1e-5, 1e-5));
  want.pow(2).sum().backward();
  EXPECT_TRUE(torch::allclose(grad_a, a.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(grad_m, m.grad(), 1e-4, 1e-5));
}

TEST_F(DoraTest, SavedAdapterHasPeftsKeysAndConfigAndLoadsBack) {
  Perturb();
  testing::TempDir dir;
  ASSERT_TRUE(SaveAdapter(*model_, options_, "tiny", dir.path()).ok());
  absl::StatusOr<nlohmann::json> config =
      ReadJsonFile(dir.path() + "/adapter_config.json");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["use_dora"], true);
  EXPECT_EQ((*config)["layers_to_transform"], nullptr);
  absl::StatusOr<TensorMap> saved =
      LoadSafetensors(dir.path() + "/adapter_model.safetensors");
  ASSERT_TRUE(saved.ok());
  EXPECT_EQ(saved->size(), 2u * 7 * 3);
  const std::string p = "base_model.model.model.layers.1.";
  EXPECT_EQ(
      saved->at(p + "self_attn.k_proj.lora_magnitude_vector").sizes().vec(),
      (std::vector<int64_t>{16}));  // 2 KV heads of 8
  EXPECT_EQ(saved->at(p + "mlp.down_proj.lora_magnitude_vector").sizes().vec(),
            (std::vector<int64_t>{32}));
  EXPECT_FALSE(
      saved->contains(p + "mlp.down_proj.lora_magnitude_vector.weight"));

  std::unique_ptr<LlamaModel> loaded = Make();
  absl::StatusOr<LoraSpec> read = LoadAdapter(*loaded, dir.path());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->use_dora);
  EXPECT_TRUE(torch::allclose(Logits(*loaded), Logits(*model_)));
}

TEST(LoraLayersTest, OnlyTheListedLayersGetFactorsAndTheConfigListsThem) {
  ModelConfig c = TinyConfig();
  c.num_hidden_layers = 3;
  torch::manual_seed(4);
  const TensorMap weights = RandomWeights(c);
  std::unique_ptr<LlamaModel> model = *LlamaModel::FromTensors(c, weights, "w");
  const LoraSpec options{.rank = 2,
                         .target_modules = {"q_proj", "up_proj"},
                         .layers_to_transform = {0, 2}};
  ASSERT_TRUE(AttachLora(*model, options).ok());
  EXPECT_TRUE(model->layers()[0].q_proj.lora_a.defined());
  EXPECT_FALSE(model->layers()[1].q_proj.lora_a.defined());
  EXPECT_TRUE(model->layers()[2].up_proj.lora_a.defined());
  EXPECT_EQ(LoraParameters(*model).size(), 2u * 2 * 2);
  testing::TempDir dir;
  ASSERT_TRUE(SaveAdapter(*model, options, "tiny", dir.path()).ok());
  absl::StatusOr<nlohmann::json> config =
      ReadJsonFile(dir.path() + "/adapter_config.json");
  EXPECT_EQ((*config)["layers_to_transform"], (nlohmann::json{0, 2}));
  EXPECT_EQ((*config)["layers_pattern"], nullptr);
  std::unique_ptr<LlamaModel> loaded =
      *LlamaModel::FromTensors(c, weights, "w");
  absl::StatusOr<LoraSpec> read = LoadAdapter(*loaded, dir.path());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->layers_to_transform, (std::vector<int>{0, 2}));
  EXPECT_FALSE(loaded->layers()[1].q_proj.lora_a.defined());

  std::unique_ptr<LlamaModel> other = *LlamaModel::FromTensors(c, weights, "w");
  absl::Status past = AttachLora(*other, {.layers_to_transform = {3}});
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.message().find("adapter.layers_to_transform"),
            std::string::npos)
      << past;
}

}  // namespace
}  // namespace lathe::engine
