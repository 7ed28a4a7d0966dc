// Full fine-tuning of a selection of the model's tensors through the SFT
// recipe: METHODS.md §2.3's CoFiTune coarse test, §4.1's HFT tests and
// §4.2's LISA test (the per-step gradients of LISA are checked in
// adapters/selection_test.cc), and the resume of each.
#include <filesystem>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/adapters/selection.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

class TrainableSelectionRunTest : public ::testing::Test {
 protected:
  // The demo with a 4-layer model.
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
    ASSERT_TRUE(ResizeDemoModel(demo_->path(), {.hidden_size = 32,
                                                .intermediate_size = 48,
                                                .num_hidden_layers = 4})
                    .ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  // Full fine-tuning of the demo, `steps_per_epoch` steps an epoch.
  RunSpec Spec(const std::string& out, int n_epochs = 1) {
    absl::StatusOr<Json> json = ReadJsonFile(demo_->path() + "/spec.json");
    EXPECT_TRUE(json.ok());
    absl::StatusOr<RunSpec> spec = ParseRunSpec(*json, demo_->path());
    EXPECT_TRUE(spec.ok()) << spec.status();
    spec->adapter = FullSpec{};
    spec->output = {.dir = out};
    spec->schedule.n_epochs = n_epochs;
    spec->data.batch_size = 14;  // 80 examples: 6 steps an epoch
    spec->optimizer.learning_rate = 1e-3;
    return *spec;
  }

  static TensorMap Base() {
    absl::StatusOr<TensorMap> base =
        LoadSafetensors(demo_->path() + "/model/model.safetensors");
    EXPECT_TRUE(base.ok());
    return *base;
  }
  static TensorMap Read(const std::string& dir) {
    absl::StatusOr<TensorMap> t = LoadSafetensors(dir + "/model.safetensors");
    EXPECT_TRUE(t.ok()) << dir;
    return t.ok() ? *t : TensorMap{};
  }
  // The names whose tensors differ between a and b.
  static std::set<std::string> Changed(const TensorMap& a, const TensorMap& b) {
    std::set<std::string> changed;
    for (const auto& [name, t] : a) {
      if (!torch::equal(t, b.at(name))) changed.insert(name);
    }
    return changed;
  }
  static Json Manifest(const std::string& dir) {
    absl::StatusOr<Json> m = ReadJsonFile(dir + "/" + kSelectionManifest);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : Json();
  }

  // Trains; kCheckpointAndStop after `stop_after` steps when positive.
  static absl::StatusOr<TrainResult> Run(const RunSpec& spec,
                                         int stop_after = 0,
                                         std::string* checkpoint = nullptr) {
    int64_t done = 0;
    TrainHooks hooks;
    hooks.on_step = [&](const StepMetrics& m) { done = m.step; };
    hooks.should_stop = [&] {
      return stop_after > 0 && done >= stop_after
                 ? StopRequest::kCheckpointAndStop
                 : StopRequest::kNone;
    };
    hooks.on_checkpoint = [&](const CheckpointInfo& c) {
      if (checkpoint != nullptr) *checkpoint = c.dir;
    };
    return Train(spec, hooks);
  }

  static testing::TempDir* demo_;
  testing::TempDir out_;
};
testing::TempDir* TrainableSelectionRunTest::demo_ = nullptr;

// METHODS.md §2.3: with the defaults on a 4-layer model only layer 1's
// up_proj and down_proj change.
TEST_F(TrainableSelectionRunTest, CoFiTuneCoarseTrainsOnlyLayerOnesUpAndDown) {
  RunSpec spec = Spec(out_.path() + "/cofi");
  spec.trainable = {.layers = {"bottom2"}, .modules = {"up_proj", "down_proj"}};
  absl::StatusOr<TrainResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Changed(Base(), Read(spec.output.dir)),
            (std::set<std::string>{"model.layers.1.mlp.down_proj.weight",
                                   "model.layers.1.mlp.up_proj.weight"}));
}

// METHODS.md §4.2 (γ = 1, K = 2, 6 steps): the draws happen at 0, 2 and 4
// and are a replay of the seeded generator; a layer never drawn is
// bit-identical; the embeddings and the head are trained; an interrupted
// run resumes to the same weights and draws.
TEST_F(TrainableSelectionRunTest, LisaDrawsEveryKStepsAndResumesExactly) {
  RunSpec spec = Spec(out_.path() + "/lisa");
  spec.seed = 5;
  spec.trainable.lisa = LisaSpec{.activated_layers = 1, .interval_steps = 2};
  absl::StatusOr<TrainResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->steps, 6);
  const Json manifest = Manifest(spec.output.dir);
  std::seed_seq seq{5u, 0u, 0x4C495341u};
  std::mt19937_64 rng(seq);
  std::set<int> drawn;
  Json want = Json::array();
  for (int64_t step : {0, 2, 4}) {
    std::vector<int> order = {0, 1, 2, 3};
    std::shuffle(order.begin(), order.end(), rng);
    want.push_back({{"step", step}, {"layers", {order[0]}}});
    drawn.insert(order[0]);
  }
  EXPECT_EQ(manifest["draws"], want);
  ASSERT_LT(drawn.size(), 4u) << "seed 5 should leave a layer undrawn";

  const std::set<std::string> changed = Changed(Base(), Read(spec.output.dir));
  EXPECT_TRUE(changed.count("model.embed_tokens.weight"));
  EXPECT_TRUE(changed.count("lm_head.weight"));
  EXPECT_TRUE(changed.count("model.norm.weight"));
  for (int l = 0; l < 4; ++l) {
    const std::string q =
        absl::StrCat("model.layers.", l, ".self_attn.q_proj.weight");
    EXPECT_EQ(changed.count(q) > 0, drawn.count(l) > 0) << l;
    if (drawn.count(l)) continue;
    for (const std::string& name : changed) {
      EXPECT_FALSE(
          absl::StartsWith(name, absl::StrCat("model.layers.", l, ".")))
          << name;
    }
  }

  // Stopped after step 3 (inside the second interval), resumed.
  RunSpec stopped = spec;
  stopped.output.dir = out_.path() + "/lisa-resumed";
  stopped.checkpoint.dir = out_.path() + "/lisa-ckpt";
  std::string checkpoint;
  ASSERT_EQ(Run(stopped, 3, &checkpoint).status().code(),
            absl::StatusCode::kAborted);
  absl::StatusOr<Json> state = ReadJsonFile(checkpoint + "/trainer_state.json");
  ASSERT_TRUE(state.ok());
  EXPECT_EQ((*state)["selection"]["draws"].size(), 2u);
  stopped.checkpoint.resume_from = checkpoint;
  ASSERT_TRUE(Run(stopped).ok());
  EXPECT_TRUE(Changed(Read(spec.output.dir), Read(stopped.output.dir)).empty());
  EXPECT_EQ(Manifest(stopped.output.dir)["draws"], want);
}

// METHODS.md §4.1: with reselect "epoch" over 2 epochs the halves differ,
// each tensor changes only in the epochs it was selected, the trained share
// of the matrices is about half; a resume in the second epoch reproduces
// the run.
TEST_F(TrainableSelectionRunTest, HalfFtChangesOnlyTheSelectedHalfPerEpoch) {
  RunSpec spec = Spec(out_.path() + "/hft", /*n_epochs=*/2);
  spec.trainable.half_ft = HalfFtSpec{.reselect = "epoch", .seed = 3};
  spec.checkpoint = {.every_steps = 6, .dir = out_.path() + "/hft-ckpt"};
  absl::StatusOr<TrainResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  const Json manifest = Manifest(spec.output.dir);
  ASSERT_EQ(manifest["selections"].size(), 2u);
  const std::set<std::string> first = manifest["selections"][0]["tensors"];
  const std::set<std::string> second = manifest["selections"][1]["tensors"];
  EXPECT_NE(first, second);
  EXPECT_GE(manifest["matrix_fraction"].get<double>(), 0.45);
  EXPECT_LE(manifest["matrix_fraction"].get<double>(), 0.55);

  const std::string epoch1 = out_.path() + "/hft-ckpt/step-6";
  EXPECT_EQ(Changed(Base(), Read(epoch1)), first);
  EXPECT_EQ(Changed(Read(epoch1), Read(spec.output.dir)), second);

  RunSpec resumed = spec;
  resumed.output.dir = out_.path() + "/hft-resumed";
  resumed.checkpoint = {.dir = out_.path() + "/hft-ckpt2"};
  std::string checkpoint;
  ASSERT_EQ(Run(resumed, 8, &checkpoint).status().code(),
            absl::StatusCode::kAborted);
  resumed.checkpoint.resume_from = checkpoint;
  ASSERT_TRUE(Run(resumed).ok());
  EXPECT_TRUE(Changed(Read(spec.output.dir), Read(resumed.output.dir)).empty());
  EXPECT_EQ(Manifest(resumed.output.dir)["selections"], manifest["selections"]);
}

// HFT with fraction 0.25 and include_embeddings on 4 layers: 0.25 x 28 = 7
// matrices (0.25 x 16 = 4 of them attention ones) and the embeddings, final
// norm and head change; every other tensor is bit-identical.
TEST_F(TrainableSelectionRunTest, HalfFtWithEmbeddingsChangesOnlyItsSelection) {
  RunSpec spec = Spec(out_.path() + "/hft-ends");
  spec.trainable.half_ft =
      HalfFtSpec{.seed = 3, .fraction = 0.25, .include_embeddings = true};
  absl::StatusOr<TrainResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  const Json manifest = Manifest(spec.output.dir);
  ASSERT_EQ(manifest["selections"].size(), 1u);
  const std::set<std::string> selected = manifest["selections"][0]["tensors"];
  int attention = 0, mlp = 0;
  for (const std::string& name : selected) {
    if (!absl::StartsWith(name, "model.layers.")) continue;
    (absl::StrContains(name, ".self_attn.") ? attention : mlp)++;
  }
  EXPECT_EQ(attention, 4);
  EXPECT_EQ(mlp, 3);
  for (const char* name :
       {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
    EXPECT_TRUE(selected.count(name)) << name;
  }
  EXPECT_EQ(selected.size(), 7u + 3u);
  EXPECT_EQ(Changed(Base(), Read(spec.output.dir)), selected);
}

TEST_F(TrainableSelectionRunTest, MoreLisaLayersThanTheModelHasIsAUserError) {
  RunSpec spec = Spec(out_.path() + "/bad");
  spec.trainable.lisa = LisaSpec{.activated_layers = 5};
  absl::StatusOr<TrainResult> result = Run(spec);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("trainable.lisa.activated_layers"),
            std::string::npos)
      << result.status();
  EXPECT_EQ(ErrorKindOf(result.status()), ErrorKind::kUserOptions);
  EXPECT_EQ(ErrorFieldOf(result.status()), "trainable.lisa.activated_layers");
}

}  // namespace
}  // namespace lathe::engine
