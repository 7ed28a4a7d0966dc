// S²FT (METHODS.md §6.1): its defining tests on the demo model resized to
// grouped-query attention. The selection is common/s2ft_selection.h's,
// itself checked against CPython's draws; what is checked here is what
// training does with it, against plain tensor arithmetic in the test.
#include "worker/engine/adapters/s2ft.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/s2ft_selection.h"
#include "gtest/gtest.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

constexpr int kLayers = 2, kHidden = 32, kIntermediate = 48, kHeads = 4,
              kKvHeads = 2;
constexpr int kHeadDim = kHidden / kHeads;

// 9 of 96 (layer, channel) pairs for down_proj, 4 for up_proj, 2 of 8
// (layer, head) pairs for o_proj, 1 of 4 (layer, KV head) for v_proj.
S2ftSpec Ratios() {
  return {.d_ratio = 0.1,
          .u_ratio = 0.05,
          .o_ratio = 0.25,
          .v_ratio = 0.25,
          .seed = 3};
}

class S2ftTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
    ASSERT_TRUE(
        ResizeDemoModel(demo_->path(), {.hidden_size = kHidden,
                                        .intermediate_size = kIntermediate,
                                        .num_hidden_layers = kLayers,
                                        .num_attention_heads = kHeads,
                                        .num_key_value_heads = kKvHeads})
            .ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  static std::string Model() { return demo_->path() + "/model"; }

  RunSpec Spec(const std::string& out) {
    absl::StatusOr<Json> json = ReadJsonFile(demo_->path() + "/spec.json");
    EXPECT_TRUE(json.ok());
    absl::StatusOr<RunSpec> spec = ParseRunSpec(*json, demo_->path());
    EXPECT_TRUE(spec.ok()) << spec.status();
    spec->adapter = Ratios();
    spec->output = {.dir = out};
    spec->schedule.n_epochs = 1;
    spec->data.batch_size = 14;  // 80 examples: 6 steps
    spec->optimizer.learning_rate = 1e-2;
    spec->optimizer.weight_decay = 0;
    return *spec;
  }

  static TensorMap Read(const std::string& path) {
    absl::StatusOr<TensorMap> t = LoadSafetensors(path, /*int64_indices=*/true);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : TensorMap{};
  }

  static std::unique_ptr<LlamaModel> Load(const std::string& dir) {
    absl::StatusOr<std::unique_ptr<LlamaModel>> m = LlamaModel::Load(dir);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }

  // Logits of a fixed batch of token ids.
  static torch::Tensor Logits(const LlamaModel& model) {
    torch::NoGradGuard no_grad;
    const torch::Tensor ids = torch::arange(2, 26, torch::kInt64).view({2, 12});
    return model.Forward(ids, torch::ones({2, 12}, torch::kInt64), false);
  }

  static testing::TempDir* demo_;
  testing::TempDir out_;
};
testing::TempDir* S2ftTest::demo_ = nullptr;

// Which rows (dim 0) or columns (dim 1) of each weight the selection
// trains, written out from the units: heads cover head_dim slots each.
std::map<std::string, std::pair<int, std::set<int64_t>>> Slots(
    const S2ftSelection& s) {
  std::map<std::string, std::pair<int, std::set<int64_t>>> out;
  auto heads = [](const std::vector<int64_t>& hs) {
    std::set<int64_t> slots;
    for (int64_t h : hs) {
      for (int d = 0; d < kHeadDim; ++d) slots.insert(h * kHeadDim + d);
    }
    return slots;
  };
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    out[p + "self_attn.v_proj.weight"] = {0, heads(s.v_heads[l])};
    out[p + "self_attn.o_proj.weight"] = {1, heads(s.o_heads[l])};
    out[p + "mlp.up_proj.weight"] = {
        0, std::set<int64_t>(s.up_channels[l].begin(), s.up_channels[l].end())};
    out[p + "mlp.down_proj.weight"] = {
        1, std::set<int64_t>(s.down_channels[l].begin(),
                             s.down_channels[l].end())};
  }
  return out;
}

S2ftSelection Selection() {
  const S2ftSpec r = Ratios();
  return SelectS2ft({.layers = kLayers,
                     .heads = kHeads,
                     .kv_heads = kKvHeads,
                     .intermediate = kIntermediate},
                    {.v_ratio = r.v_ratio,
                     .o_ratio = r.o_ratio,
                     .u_ratio = r.u_ratio,
                     .d_ratio = r.d_ratio},
                    r.seed);
}

// §6.1's first test: W_ft - W_0 is exactly zero outside the selected rows
// or columns and nonzero in each of them; no other tensor moves.
TEST_F(S2ftTest, TrainingChangesOnlyTheSelectedRowsAndColumns) {
  const S2ftSelection selection = Selection();
  ASSERT_EQ(selection.Count(), 1 + 2 + 4 + 9);
  RunSpec spec = Spec(out_.path() + "/s2ft");
  absl::StatusOr<TrainResult> result = Train(spec, {});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->steps, 6);

  const TensorMap base = Read(Model() + "/model.safetensors");
  const TensorMap tuned = Read(spec.output.dir + "/model.safetensors");
  const auto slots = Slots(selection);
  int adapted = 0;
  for (const auto& [name, w0] : base) {
    const torch::Tensor diff = tuned.at(name) - w0;
    auto it = slots.find(name);
    if (it == slots.end() || it->second.second.empty()) {
      EXPECT_TRUE(torch::equal(tuned.at(name), w0)) << name << " moved";
      continue;
    }
    ++adapted;
    const auto& [dim, selected] = it->second;
    for (int64_t j = 0; j < diff.size(dim); ++j) {
      const double norm = diff.select(dim, j).abs().max().item<double>();
      if (selected.count(j)) {
        EXPECT_GT(norm, 0) << name << (dim == 0 ? " row " : " column ") << j;
      } else {
        EXPECT_EQ(norm, 0) << name << (dim == 0 ? " row " : " column ") << j;
      }
    }
  }
  int nonempty = 0;
  for (const auto& [name, slot] : slots) nonempty += !slot.second.empty();
  EXPECT_EQ(adapted, nonempty);
  EXPECT_GE(adapted, 4);  // each kind somewhere; v_proj in one layer only

  // The diff: indices in the original order, deltas = the weights' change.
  const TensorMap diff = Read(spec.output.dir + "/" + kS2ftWeightsFile);
  for (const auto& [name, slot] : slots) {
    const auto& [dim, selected] = slot;
    const std::string stem =
        name.substr(0, name.size() - std::string(".weight").size());
    const std::string mode = dim == 0 ? ".rows." : ".cols.";
    if (selected.empty()) {
      EXPECT_EQ(diff.count(stem + mode + "index"), 0u) << stem;
      continue;
    }
    const torch::Tensor index = diff.at(stem + mode + "index");
    ASSERT_EQ(index.scalar_type(), torch::kInt64);
    EXPECT_EQ(std::vector<int64_t>(index.data_ptr<int64_t>(),
                                   index.data_ptr<int64_t>() + index.numel()),
              std::vector<int64_t>(selected.begin(), selected.end()))
        << stem;
    const torch::Tensor change =
        (tuned.at(name) - base.at(name)).index_select(dim, index);
    EXPECT_TRUE(
        torch::allclose(diff.at(stem + mode + "delta"), change, 0, 1e-6))
        << stem;
  }
  absl::StatusOr<Json> config =
      ReadJsonFile(spec.output.dir + "/" + kS2ftConfigFile);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ((*config)["seed"], 3);
  // 1 KV head's 8 rows x 32 + 2 heads' 8 columns x 32 + 4 rows x 32 + 9 x 32.
  EXPECT_EQ((*config)["trainable_parameters"], (8 + 16 + 4 + 9) * kHidden);
}

// §6.1's second test: the diff applied to a fresh base gives the fine-tuned
// logits (1e-6), as the unfused slices and the merged folder do; reverting
// gives the base back; a base it was not made on is refused.
TEST_F(S2ftTest, TheDiffAppliedToAFreshBaseReproducesTheLogits) {
  RunSpec spec = Spec(out_.path() + "/s2ft");
  ASSERT_TRUE(Train(spec, {}).ok());
  const std::string applied = out_.path() + "/applied";
  ASSERT_TRUE(ApplyS2ftDiff(Model(), spec.output.dir, applied, false).ok());

  std::unique_ptr<LlamaModel> unfused = Load(Model());
  absl::StatusOr<AdapterSpec> loaded = LoadTrained(*unfused, spec.output.dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(std::holds_alternative<S2ftSpec>(*loaded));
  const torch::Tensor want =
      Logits(*Load(spec.output.dir));  // the merged folder
  EXPECT_TRUE(torch::allclose(Logits(*Load(applied)), want, 0, 1e-6));
  EXPECT_TRUE(torch::allclose(Logits(*unfused), want, 0, 1e-5));
  EXPECT_FALSE(torch::allclose(Logits(*Load(Model())), want, 0, 1e-3));

  const std::string reverted = out_.path() + "/reverted";
  ASSERT_TRUE(ApplyS2ftDiff(applied, spec.output.dir, reverted, true).ok());
  const TensorMap base = Read(Model() + "/model.safetensors");
  const TensorMap back = Read(reverted + "/model.safetensors");
  for (const auto& [name, w0] : base) {
    EXPECT_TRUE(torch::allclose(back.at(name), w0, 0, 1e-6)) << name;
  }

  // Applying twice: the merged model is not the base the diff expects.
  absl::Status twice =
      ApplyS2ftDiff(applied, spec.output.dir, out_.path() + "/x", false);
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition) << twice;
  EXPECT_TRUE(absl::StrContains(twice.message(), "fingerprint")) << twice;
  // Reverting the base: not a model the diff was applied to.
  absl::Status revert =
      ApplyS2ftDiff(Model(), spec.output.dir, out_.path() + "/y", true);
  EXPECT_EQ(revert.code(), absl::StatusCode::kFailedPrecondition) << revert;
}

TEST_F(S2ftTest, ADiffIsRefusedOnAModelOfAnotherShapeOrWhenMalformed) {
  RunSpec spec = Spec(out_.path() + "/s2ft");
  ASSERT_TRUE(Train(spec, {}).ok());
  testing::TempDir other;
  ASSERT_TRUE(MakeDemo(other.path()).ok());  // 64 wide, 160 channels
  absl::Status shape = ApplyS2ftDiff(other.path() + "/model", spec.output.dir,
                                     out_.path() + "/x", false);
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument) << shape;
  EXPECT_TRUE(absl::StrContains(shape.message(), "field \"model\"")) << shape;

  // An index out of range, named with its tensor.
  TensorMap tensors = Read(spec.output.dir + "/" + kS2ftWeightsFile);
  std::string index_key;
  for (const auto& [name, t] : tensors) {
    if (absl::EndsWith(name, ".index")) index_key = name;
  }
  ASSERT_FALSE(index_key.empty());
  tensors[index_key] = tensors[index_key] + 1000;
  ASSERT_TRUE(
      SaveSafetensors(spec.output.dir + "/" + kS2ftWeightsFile, tensors, {})
          .ok());
  absl::Status range =
      ApplyS2ftDiff(Model(), spec.output.dir, out_.path() + "/y", false);
  EXPECT_EQ(range.code(), absl::StatusCode::kInvalidArgument) << range;
  EXPECT_TRUE(absl::StrContains(range.message(), index_key)) << range;
}

// §6.1's third test: the reference permutes FFN channels to make its slices
// contiguous; the function is unchanged by a consistent permutation of
// gate and up rows and down columns (which is why Lathe may index them in
// place instead).
TEST_F(S2ftTest, PermutingFfnChannelsKeepsTheLogits) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(Model());
  ASSERT_TRUE(config.ok());
  TensorMap weights = Read(Model() + "/model.safetensors");
  std::unique_ptr<LlamaModel> base = Load(Model());
  torch::manual_seed(11);
  for (int l = 0; l < kLayers; ++l) {
    const torch::Tensor perm = torch::randperm(kIntermediate, torch::kInt64);
    const std::string p = absl::StrCat("model.layers.", l, ".mlp.");
    weights[p + "gate_proj.weight"] =
        weights[p + "gate_proj.weight"].index_select(0, perm);
    weights[p + "up_proj.weight"] =
        weights[p + "up_proj.weight"].index_select(0, perm);
    weights[p + "down_proj.weight"] =
        weights[p + "down_proj.weight"].index_select(1, perm);
  }
  absl::StatusOr<std::unique_ptr<LlamaModel>> permuted =
      LlamaModel::FromTensors(*config, weights, "permuted");
  ASSERT_TRUE(permuted.ok()) << permuted.status();
  EXPECT_TRUE(torch::allclose(Logits(**permuted), Logits(*base), 0, 1e-6));
}

// A run interrupted by a checkpoint resumes to the same diff, bit for bit.
TEST_F(S2ftTest, AnInterruptedRunResumesToTheSameDiff) {
  RunSpec whole = Spec(out_.path() + "/whole");
  ASSERT_TRUE(Train(whole, {}).ok());
  RunSpec first = Spec(out_.path() + "/first");
  first.checkpoint.dir = out_.path() + "/ckpt";
  std::string checkpoint;
  int64_t done = 0;
  TrainHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) { done = m.step; };
  hooks.should_stop = [&] {
    return done >= 3 ? StopRequest::kCheckpointAndStop : StopRequest::kNone;
  };
  hooks.on_checkpoint = [&](const CheckpointInfo& c) { checkpoint = c.dir; };
  const absl::StatusOr<TrainResult> stopped = Train(first, hooks);
  ASSERT_TRUE(absl::IsAborted(stopped.status())) << stopped.status();
  ASSERT_FALSE(checkpoint.empty());
  EXPECT_TRUE(std::filesystem::exists(checkpoint + "/" + kS2ftWeightsFile));
  RunSpec rest = Spec(out_.path() + "/rest");
  rest.checkpoint.dir = first.checkpoint.dir;
  rest.checkpoint.resume_from = checkpoint;
  ASSERT_TRUE(Train(rest, {}).ok());
  const TensorMap a = Read(whole.output.dir + "/" + kS2ftWeightsFile);
  const TensorMap b = Read(rest.output.dir + "/" + kS2ftWeightsFile);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a)
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
}

// bfloat16 compute (the GPU path, run on the CPU): the base held in bf16,
// the deltas float32 masters cast at use; the unfused forward agrees with
// the float32 merged model to bf16's precision and only the selected
// slots move.
TEST_F(S2ftTest, BfloatComputeTrainsTheSameSlots) {
  RunSpec spec = Spec(out_.path() + "/bf16");
  spec.device = {.device = "cpu", .dtype = "bfloat16"};
  absl::StatusOr<TrainResult> result = Train(spec, {});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(std::isfinite(result->last_loss));
  const TensorMap base = Read(Model() + "/model.safetensors");
  const TensorMap tuned = Read(spec.output.dir + "/model.safetensors");
  const auto slots = Slots(Selection());
  for (const auto& [name, w0] : base) {
    auto it = slots.find(name);
    const torch::Tensor diff = tuned.at(name) - w0;
    if (it == slots.end() || it->second.second.empty()) {
      EXPECT_TRUE(torch::equal(tuned.at(name), w0)) << name;
      continue;
    }
    const auto& [dim, selected] = it->second;
    for (int64_t j = 0; j < diff.size(dim); ++j) {
      if (!selected.count(j))
        EXPECT_EQ(diff.select(dim, j).abs().max().item<double>(), 0) << name;
    }
  }
  std::unique_ptr<LlamaModel> unfused = Load(Model());
  ASSERT_TRUE(LoadTrained(*unfused, spec.output.dir).ok());
  unfused->Place(torch::kCPU, torch::kBFloat16, torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(Logits(*unfused), Logits(*Load(spec.output.dir)),
                              0.05, 0.05));
}

TEST_F(S2ftTest, RatiosThatSelectNothingAreRefusedByField) {
  RunSpec spec = Spec(out_.path() + "/none");
  // int(96 x 0.005) = 0 channels: nothing at all.
  spec.adapter = S2ftSpec{.d_ratio = 0.005};
  absl::StatusOr<TrainResult> result = Train(spec, {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(result.status().message(), "adapter.d_ratio"))
      << result.status();
  spec.adapter = S2ftSpec{.d_ratio = 1.5};
  EXPECT_TRUE(
      absl::StrContains(Validate(spec.adapter).message(), "adapter.d_ratio"));
  spec.adapter = S2ftSpec{.d_ratio = 0};
  EXPECT_TRUE(
      absl::StrContains(Validate(spec.adapter).message(), "every ratio is 0"));
}

}  // namespace
}  // namespace lathe::engine
