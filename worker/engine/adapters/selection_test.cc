#include "worker/engine/adapters/selection.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/model/random_model_test_util.h"
#include "worker/engine/optim/adamw.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

std::unique_ptr<LlamaModel> FourLayers() {
  ModelConfig c = testing::TinyConfig();
  c.num_hidden_layers = 4;
  return testing::RandomModel(c, testing::Trainable::kAll);
}

std::unique_ptr<TrainableSelection> Make(const TrainableSpec& spec,
                                         const LlamaModel& model,
                                         uint64_t seed = 42) {
  absl::StatusOr<std::unique_ptr<TrainableSelection>> s =
      TrainableSelection::Create(spec, model, seed);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

// METHODS.md §2.3: CoFiTune's default range of a 4-layer model is layer 1.
TEST(TrainableSelectionTest, CoFiTuneBandAndModulesSelectLayerOnesUpAndDown) {
  auto model = FourLayers();
  auto s = Make({.layers = {"bottom2"}, .modules = {"up_proj", "down_proj"}},
                *model);
  EXPECT_TRUE(s->Advance(0, 0));
  EXPECT_EQ(s->trained(),
            (std::set<std::string>{"model.layers.1.mlp.down_proj.weight",
                                   "model.layers.1.mlp.up_proj.weight"}));
  EXPECT_FALSE(s->Advance(1, 0));
  s->Apply(*model);
  for (const auto& [name, t] : model->Weights(false)) {
    EXPECT_EQ(t.requires_grad(), s->trained().count(name) > 0) << name;
  }
  // A module group and a norm name a layer's tensors by dotted component.
  auto mlp = Make({.layers = {"0", "3"}, .modules = {"mlp", "input_layernorm"}},
                  *model);
  mlp->Advance(0, 0);
  EXPECT_EQ(mlp->trained().size(), 8u);
  EXPECT_TRUE(mlp->trained().count("model.layers.3.input_layernorm.weight"));
  EXPECT_FALSE(mlp->trained().count("model.layers.3.self_attn.q_proj.weight"));

  absl::StatusOr<std::unique_ptr<TrainableSelection>> past =
      TrainableSelection::Create({.layers = {"2-4"}}, *model, 42);
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.status().message().find("trainable.layers"), std::string::npos)
      << past.status();
}

TEST(TrainableSelectionTest, LisaDrawsEveryKStepsFromTheSeededGenerator) {
  auto model = FourLayers();
  const TrainableSpec spec{
      .lisa = LisaSpec{.activated_layers = 1, .interval_steps = 2}};
  auto s = Make(spec, *model, /*seed=*/123);
  std::vector<int64_t> changed;
  for (int64_t step = 0; step < 6; ++step) {
    if (s->Advance(step, 0)) changed.push_back(step);
    // Always the embeddings, the final norm and the head, and one layer.
    EXPECT_TRUE(s->trained().count("model.embed_tokens.weight"));
    EXPECT_TRUE(s->trained().count("model.norm.weight"));
    EXPECT_TRUE(s->trained().count("lm_head.weight"));
    EXPECT_EQ(s->trained().size(), 3u + 9u);  // 7 projections + 2 norms
  }
  for (int64_t step : changed) EXPECT_EQ(step % 2, 0) << step;
  EXPECT_EQ(changed.front(), 0);

  // The replay: one generator for the run, a shuffle per draw.
  std::seed_seq seq{123u, 0u, 0x4C495341u};
  std::mt19937_64 rng(seq);
  Json want = Json::array();
  for (int64_t step : {0, 2, 4}) {
    std::vector<int> order = {0, 1, 2, 3};
    std::shuffle(order.begin(), order.end(), rng);
    want.push_back({{"step", step}, {"layers", {order[0]}}});
  }
  EXPECT_EQ(s->State()["draws"], want);

  absl::StatusOr<std::unique_ptr<TrainableSelection>> too_many =
      TrainableSelection::Create({.lisa = LisaSpec{.activated_layers = 5}},
                                 *model, 1);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("trainable.lisa.activated_layers"),
            std::string::npos)
      << too_many.status();
}

// METHODS.md §4.2's per-step check, with the optimizer following the
// selection as the recipe does: at every step exactly one decoder layer has
// gradients, the embeddings and the head always; AdamW holds moments for
// the trained tensors only.
TEST(TrainableSelectionTest, LisaStepsGiveGradientsToOneLayerAndTheEnds) {
  auto model = FourLayers();
  auto s = Make({.lisa = LisaSpec{.activated_layers = 1, .interval_steps = 2}},
                *model);
  std::vector<AdamW::Param> all;
  for (const auto& [name, t] : model->Weights(false)) all.push_back({name, t});
  AdamW optimizer({}, AdamWOptions{});
  const torch::Tensor ids = torch::tensor({{1, 5, 7, 2, 9, 3}}, torch::kInt64);
  for (int64_t step = 0; step < 6; ++step) {
    if (s->Advance(step, 0)) {
      s->Apply(*model);
      std::vector<AdamW::Param> trained;
      for (const AdamW::Param& p : all) {
        if (s->trained().count(p.name)) trained.push_back(p);
      }
      optimizer.SetParams(trained);
    }
    optimizer.ZeroGrad();
    model->Forward(ids, torch::ones_like(ids), true).pow(2).mean().backward();
    std::set<int> with_grads;
    for (const auto& [name, t] : model->Weights(false)) {
      if (!t.grad().defined()) continue;
      if (absl::StartsWith(name, "model.layers.")) {
        with_grads.insert(name[13] - '0');
      }
    }
    EXPECT_EQ(with_grads.size(), 1u) << step;
    for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
      EXPECT_TRUE(model->Weights(false).at(name).grad().defined()) << name;
    }
    optimizer.Step(1e-3);
    EXPECT_EQ(optimizer.State().size(), 3 * s->trained().size());
  }
}

TEST(TrainableSelectionTest, RestoredStateContinuesWithTheSameDraws) {
  auto model = FourLayers();
  for (const TrainableSpec& spec :
       {TrainableSpec{.lisa =
                          LisaSpec{.activated_layers = 2, .interval_steps = 3}},
        TrainableSpec{.half_ft = HalfFtSpec{.reselect = "epoch"}}}) {
    auto whole = Make(spec, *model);
    auto first = Make(spec, *model);
    for (int64_t step = 0; step < 7; ++step) {
      whole->Advance(step, step / 4);
      first->Advance(step, step / 4);
    }
    auto resumed = Make(spec, *model);
    ASSERT_TRUE(resumed->Restore(Json::parse(first->State().dump())).ok());
    EXPECT_EQ(resumed->trained(), whole->trained());
    for (int64_t step = 7; step < 20; ++step) {
      EXPECT_EQ(resumed->Advance(step, step / 4),
                whole->Advance(step, step / 4));
      EXPECT_EQ(resumed->trained(), whole->trained()) << step;
    }
    EXPECT_EQ(resumed->State(), whole->State());
    EXPECT_EQ(resumed->Restore(Json{{"kind", "layers"}}).code(),
              absl::StatusCode::kDataLoss);
  }
}

// METHODS.md §4.1: half of each layer's attention matrices, 2 or 1 of the
// MLP's in balanced halves of the layers, about half the parameters.
TEST(TrainableSelectionTest, HalfFtTrainsHalfTheMatricesAndReselectsPerEpoch) {
  auto model = FourLayers();
  auto s =
      Make({.half_ft = HalfFtSpec{.reselect = "epoch", .seed = 9}}, *model);
  s->Advance(0, 0);
  const std::set<std::string> epoch0 = s->trained();
  int two_mlp = 0;
  for (int l = 0; l < 4; ++l) {
    int attention = 0, mlp = 0;
    for (const std::string& name : epoch0) {
      if (!absl::StartsWith(name, absl::StrCat("model.layers.", l, ".")))
        continue;
      (absl::StrContains(name, ".self_attn.") ? attention : mlp)++;
    }
    EXPECT_EQ(attention, 2) << l;
    EXPECT_TRUE(mlp == 1 || mlp == 2) << l;
    two_mlp += mlp == 2;
  }
  EXPECT_EQ(two_mlp, 2);
  const double fraction = s->State()["matrix_fraction"].get<double>();
  EXPECT_GE(fraction, 0.45);
  EXPECT_LE(fraction, 0.55);
  EXPECT_FALSE(s->trained().count("model.embed_tokens.weight"));
  EXPECT_FALSE(s->trained().count("model.layers.0.input_layernorm.weight"));

  EXPECT_FALSE(s->Advance(5, 0));
  EXPECT_TRUE(s->Advance(6, 1));
  EXPECT_NE(s->trained(), epoch0);
  EXPECT_EQ(s->State()["selections"].size(), 2u);
  // The same seed, the same halves; per stage, one half for every epoch.
  auto again = Make({.half_ft = HalfFtSpec{.reselect = "epoch", .seed = 9}},
                    *model, /*seed=*/1);
  again->Advance(0, 0);
  EXPECT_EQ(again->trained(), epoch0);
  auto stage = Make({.half_ft = HalfFtSpec{.seed = 9}}, *model);
  stage->Advance(0, 0);
  EXPECT_EQ(stage->trained(), epoch0);
  EXPECT_FALSE(stage->Advance(6, 1));
}

}  // namespace
}  // namespace lathe::engine
