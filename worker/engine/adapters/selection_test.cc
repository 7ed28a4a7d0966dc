#include "worker/engine/adapters/selection.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/model/random_model_test_util.h"
#include "worker/engine/optim/adamw.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

std::unique_ptr<LlamaModel> Layers(int layers) {
  ModelConfig c = testing::TinyConfig();
  c.num_hidden_layers = layers;
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
  auto model = Layers(4);
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
  auto model = Layers(4);
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
  auto model = Layers(4);
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
  auto model = Layers(4);
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
  auto model = Layers(4);
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

// The decoder-layer matrices of `names`, per layer: {attention, mlp}.
std::map<int, std::pair<int, int>> MatricesPerLayer(
    const std::set<std::string>& names) {
  std::map<int, std::pair<int, int>> per_layer;
  for (const std::string& name : names) {
    if (!absl::StartsWith(name, "model.layers.") ||
        !absl::EndsWith(name, "_proj.weight")) {
      continue;
    }
    const int layer = std::stoi(name.substr(13));
    auto& [attention, mlp] = per_layer[layer];
    (absl::StrContains(name, ".self_attn.") ? attention : mlp)++;
  }
  return per_layer;
}

// fine_tuning.proto HalfFt's rule by hand: of L layers' 7L matrices, nearest
// with halves down of f·7L in all and of f·4L attention ones, each group
// spread evenly over the layers.
TEST(TrainableSelectionTest, HalfFtTrainsTheRoundedFractionOfTheMatrices) {
  struct Case {
    int layers;
    double fraction;
    int attention;  // R(f·4L)
    int total;      // R(f·7L)
  };
  for (const Case& c : {
           Case{4, 0.1, 2, 3},     // 1.6 -> 2, 2.8 -> 3
           Case{4, 0.25, 4, 7},    // 4, 7
           Case{4, 0.3, 5, 8},     // 4.8 -> 5, 8.4 -> 8
           Case{4, 0.5, 8, 14},    // 8, 14
           Case{4, 0.75, 12, 21},  // 12, 21
           Case{4, 1.0, 16, 28},   // every matrix
           Case{3, 0.5, 6, 10},    // 6, 10.5 -> 10 (halves down)
           Case{3, 0.6, 7, 13},    // 7.2 -> 7, 12.6 -> 13
           Case{1, 0.2, 1, 1},     // 0.8 -> 1, 1.4 -> 1
       }) {
    SCOPED_TRACE(absl::StrCat(c.layers, " layers, fraction ", c.fraction));
    auto model = Layers(c.layers);
    auto s = Make({.half_ft = HalfFtSpec{.seed = 11, .fraction = c.fraction}},
                  *model);
    s->Advance(0, 0);
    const int mlp = c.total - c.attention;
    int attention_seen = 0, mlp_seen = 0;
    for (const auto& [layer, counts] : MatricesPerLayer(s->trained())) {
      attention_seen += counts.first;
      mlp_seen += counts.second;
      EXPECT_GE(counts.first, c.attention / c.layers) << layer;
      EXPECT_LE(counts.first, (c.attention + c.layers - 1) / c.layers) << layer;
      EXPECT_GE(counts.second, mlp / c.layers) << layer;
      EXPECT_LE(counts.second, (mlp + c.layers - 1) / c.layers) << layer;
    }
    EXPECT_EQ(attention_seen, c.attention);
    EXPECT_EQ(mlp_seen, mlp);
    // Only matrices: no norm, embedding or head.
    EXPECT_EQ(s->trained().size(), static_cast<size_t>(c.total));
  }
  absl::StatusOr<std::unique_ptr<TrainableSelection>> none =
      TrainableSelection::Create({.half_ft = HalfFtSpec{.fraction = 0.05}},
                                 *Layers(1), 1);  // 0.35 -> 0 matrices
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("trainable.half_ft.fraction"),
            std::string::npos)
      << none.status();
}

// Fraction 0.5 keeps METHODS.md §4.1's draw, replayed here as it was first
// written: a shuffle of the layers whose first ⌊L/2⌋ get 2 MLP matrices,
// then per layer a shuffle of {q,k,v,o} (the first 2 trained) and one of
// {gate,up,down} (the first 2 or 1).
TEST(TrainableSelectionTest, HalfFtAtOneHalfKeepsTheTwoOfFourRule) {
  for (int L : {3, 4}) {
    for (uint64_t seed : {9u, 1234u}) {
      auto model = Layers(L);
      auto s = Make({.half_ft = HalfFtSpec{.reselect = "epoch", .seed = seed}},
                    *model);
      s->Advance(0, 0);
      s->Advance(1, 1);
      Json want = Json::array();
      for (int epoch : {0, 1}) {
        std::seed_seq seq{static_cast<uint32_t>(seed), 0u,
                          static_cast<uint32_t>(epoch)};
        std::mt19937_64 rng(seq);
        std::vector<int> order(L);
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        std::set<std::string> tensors;
        for (int l = 0; l < L; ++l) {
          std::vector<std::string> attention = {"q_proj", "k_proj", "v_proj",
                                                "o_proj"};
          std::vector<std::string> mlp = {"gate_proj", "up_proj", "down_proj"};
          std::shuffle(attention.begin(), attention.end(), rng);
          std::shuffle(mlp.begin(), mlp.end(), rng);
          const bool two = std::find(order.begin(), order.begin() + L / 2, l) !=
                           order.begin() + L / 2;
          for (int i = 0; i < 2; ++i) {
            tensors.insert(absl::StrCat("model.layers.", l, ".self_attn.",
                                        attention[i], ".weight"));
          }
          for (int i = 0; i < (two ? 2 : 1); ++i) {
            tensors.insert(
                absl::StrCat("model.layers.", l, ".mlp.", mlp[i], ".weight"));
          }
        }
        want.push_back({{"epoch", epoch}, {"tensors", tensors}});
      }
      EXPECT_EQ(s->State()["selections"], want) << L << " layers, " << seed;
    }
  }
}

TEST(TrainableSelectionTest, HalfFtWithEmbeddingsAlsoTrainsTheEnds) {
  auto model = Layers(4);
  auto plain =
      Make({.half_ft = HalfFtSpec{.reselect = "epoch", .seed = 5}}, *model);
  auto ends = Make({.half_ft = HalfFtSpec{.reselect = "epoch",
                                          .seed = 5,
                                          .include_embeddings = true}},
                   *model);
  for (int epoch : {0, 1}) {
    plain->Advance(epoch, epoch);
    ends->Advance(epoch, epoch);
    std::set<std::string> want = plain->trained();
    want.insert(
        {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"});
    EXPECT_EQ(ends->trained(), want) << epoch;
  }
}

}  // namespace
}  // namespace lathe::engine
