// The preference recipes' defining tests (METHODS.md §1.7, §1.8), on the
// demo's tiny model, against numbers derived by hand or by a plain
// reference computed here from the model's full logits.
#include "worker/engine/recipes/preference.h"

#include <cmath>
#include <fstream>
#include <numeric>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/adapters/selection.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/data/preference_data.h"
#include "worker/engine/loss/chunked_cross_entropy.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

// Four distinct pairs the demo's vocabulary covers.
constexpr const char* kPairs[][3] = {
    {"What is the capital of France?", "The capital of France is Paris.",
     "The capital of France is Rome."},
    {"What colour is the sky?", "The sky is blue.", "The sky is green."},
    {"What is 2 plus 3?", "2 plus 3 is 5.", "2 plus 3 is 7."},
    {"What is the capital of Italy?", "The capital of Italy is Rome.",
     "The capital of Italy is Paris."},
};

std::string PairLine(const char* prompt, const char* chosen,
                     const char* rejected) {
  nlohmann::json line = {
      {"input", {{"messages", {{{"role", "user"}, {"content", prompt}}}}}},
      {"preferred_output", {{{"role", "assistant"}, {"content", chosen}}}},
      {"non_preferred_output",
       {{{"role", "assistant"}, {"content", rejected}}}}};
  return line.dump();
}

class PreferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
    std::ofstream pairs(demo_->path() + "/pairs.jsonl");
    std::ofstream same(demo_->path() + "/same.jsonl");
    for (const auto& p : kPairs) {
      pairs << PairLine(p[0], p[1], p[2]) << "\n";
      same << PairLine(p[0], p[1], p[1]) << "\n";
    }
  }
  static void TearDownTestSuite() { delete demo_; }

  // The demo's spec on `file` with `objective`, one epoch of batch 4 (one
  // step per epoch), writing under `out`.
  static RunSpec Spec(const std::string& out, ObjectiveSpec objective,
                      const std::string& file = "pairs.jsonl") {
    RunSpec spec = ParseRunSpec(ReadJsonFile(demo_->path() + "/spec.json")
                                    .value(),
                                demo_->path())
                       .value();
    spec.objective = std::move(objective);
    spec.data.training_file = demo_->path() + "/" + file;
    spec.data.validation_file.clear();
    spec.data.batch_size = 4;
    spec.data.max_seq_len = 512;
    spec.schedule = {.n_epochs = 1, .warmup_steps = 0,
                     .lr_scheduler = "constant"};
    spec.optimizer.learning_rate = 1e-3;
    spec.optimizer.weight_decay = 0;
    spec.output.dir = out + "/adapter";
    spec.checkpoint.dir = out + "/ckpt";
    return spec;
  }

  struct Run {
    absl::StatusOr<TrainResult> result;
    std::vector<StepMetrics> steps;
    std::vector<CheckpointInfo> checkpoints;
  };
  static Run TrainRun(const RunSpec& spec, int stop_after = 0) {
    Run run;
    int64_t done = 0;
    run.result = Train(
        spec,
        {.on_step =
             [&](const StepMetrics& m) {
               run.steps.push_back(m);
               done = m.step;
             },
         .should_stop =
             [&] {
               return stop_after > 0 && done >= stop_after
                          ? StopRequest::kCheckpointAndStop
                          : StopRequest::kNone;
             },
         .on_checkpoint =
             [&](const CheckpointInfo& c) { run.checkpoints.push_back(c); }});
    return run;
  }

  static testing::TempDir* demo_;
};
testing::TempDir* PreferenceTest::demo_ = nullptr;

TensorMap Tensors(const std::string& path) {
  absl::StatusOr<TensorMap> t = LoadSafetensors(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : TensorMap{};
}

// §1.7 test 1: with LoRA's B = 0 the policy is the reference, so every
// reward is 0 (accuracy 0: the comparison is strict) and the loss is ln 2
// whatever β and ε; IPO's is 1/(4β²).
TEST_F(PreferenceTest, AtStepZeroTheLossIsLn2AndTheRewardsAreZero) {
  testing::TempDir out;
  Run sigmoid = TrainRun(Spec(out.path(), DpoSpec{.beta = 0.3,
                                                  .label_smoothing = 0.2}));
  ASSERT_TRUE(sigmoid.result.ok()) << sigmoid.result.status();
  ASSERT_EQ(sigmoid.steps.size(), 1u);
  const StepMetrics& m = sigmoid.steps[0];
  EXPECT_NEAR(m.loss, std::log(2.0), 1e-6);
  EXPECT_EQ(m.values.at("rewards/chosen"), 0.0);
  EXPECT_EQ(m.values.at("rewards/rejected"), 0.0);
  EXPECT_EQ(m.values.at("rewards/margins"), 0.0);
  EXPECT_EQ(m.values.at("rewards/accuracies"), 0.0);
  EXPECT_LT(m.values.at("logps/chosen"), 0.0);

  testing::TempDir ipo_out;
  Run ipo = TrainRun(
      Spec(ipo_out.path(), DpoSpec{.beta = 0.1, .loss_type = "ipo"}));
  ASSERT_TRUE(ipo.result.ok()) << ipo.result.status();
  EXPECT_NEAR(ipo.steps[0].loss, 1 / (4 * 0.1 * 0.1), 1e-4);

  // Full fine-tuning: the precomputed reference is the initial model, but
  // computed over the pairs in file order while the step packs them in the
  // shuffled order, so the sums round differently (CI saw -9.5e-8): equal
  // to rounding, not bit for bit.
  testing::TempDir full_out;
  RunSpec full = Spec(full_out.path(), DpoSpec{});
  full.adapter = FullSpec{};
  Run f = TrainRun(full);
  ASSERT_TRUE(f.result.ok()) << f.result.status();
  EXPECT_NEAR(f.steps[0].loss, std::log(2.0), 1e-6);
  EXPECT_NEAR(f.steps[0].values.at("rewards/margins"), 0.0, 1e-6);
  EXPECT_NEAR(f.steps[0].values.at("rewards/chosen"), 0.0, 1e-6);
}

// §1.7 test 2: with chosen == rejected the DPO gradient is zero (exactly,
// in exact arithmetic; float32 leaves rounding below 1e-6), where "SFT on
// the chosen replies" would have a large one. (The adapter is not checked
// bit for bit after the step: AdamW's first update is lr·g/(|g| + ε), which
// turns a 1e-9 rounding residue into a visible change.)
TEST_F(PreferenceTest, IdenticalPairsGiveNoGradient) {
  testing::TempDir same, distinct;
  Run s = TrainRun(Spec(same.path(), DpoSpec{}, "same.jsonl"));
  ASSERT_TRUE(s.result.ok()) << s.result.status();
  EXPECT_NEAR(s.steps[0].loss, std::log(2.0), 1e-6);
  EXPECT_LT(s.steps[0].grad_norm, 1e-6);
  Run d = TrainRun(Spec(distinct.path(), DpoSpec{}));
  ASSERT_TRUE(d.result.ok()) << d.result.status();
  EXPECT_GT(d.steps[0].grad_norm, 1e-3);
  // The same data as supervised fine-tuning on the chosen replies.
  testing::TempDir sft;
  RunSpec chosen = Spec(sft.path(), SftSpec{});
  chosen.data.training_file = demo_->path() + "/train.jsonl";
  Run c = TrainRun(chosen);
  ASSERT_TRUE(c.result.ok()) << c.result.status();
  EXPECT_GT(c.steps[0].grad_norm, 1e-3);
}

// §1.7 test 3: 30 steps at lr 1e-3 on 4 distinct pairs separate them.
TEST_F(PreferenceTest, ThirtyStepsLearnThePreference) {
  testing::TempDir out;
  RunSpec spec = Spec(out.path(), DpoSpec{});
  spec.schedule.n_epochs = 30;
  Run run = TrainRun(spec);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  ASSERT_EQ(run.steps.size(), 30u);
  const StepMetrics& last = run.steps.back();
  EXPECT_EQ(last.values.at("rewards/accuracies"), 1.0);
  EXPECT_GT(last.values.at("rewards/margins"), 0.0);
  EXPECT_LT(last.values.at("logps/rejected"),
            run.steps[0].values.at("logps/rejected"));
  EXPECT_LT(last.loss, std::log(2.0));
}

// Chosen and rejected rows in one forward pass, packed or padded, give the
// log-probabilities of each row alone, which equal a plain sum of
// log_softmax over the model's full logits.
TEST_F(PreferenceTest, BatchedAndPackedRowsGiveTheLogpsOfEachRowAlone) {
  std::unique_ptr<LlamaModel> model =
      LlamaModel::Load(demo_->path() + "/model").value();
  std::unique_ptr<Tokenizer> tokenizer =
      Tokenizer::Load(demo_->path() + "/model").value();
  const ChatTemplate t = ChatTemplateFor(*tokenizer, "").value();
  const PreferenceDataset data =
      LoadPreferenceDataset(demo_->path() + "/pairs.jsonl", *tokenizer, t,
                            64, 128)
          .value();
  const std::vector<Example> rows = PairRows(data.pairs, {0, 1, 2, 3});
  torch::NoGradGuard no_grad;
  // The plain reference, one row at a time.
  std::vector<double> expected;
  for (const Example& row : rows) {
    const torch::Tensor ids =
        torch::tensor(std::vector<int64_t>(row.ids.begin(), row.ids.end()))
            .unsqueeze(0);
    const torch::Tensor logp =
        torch::log_softmax(model->Forward(ids, torch::ones_like(ids), false),
                           -1)[0];
    double sum = 0;
    for (size_t i = 1; i < row.ids.size(); ++i) {
      if (row.loss_mask[i]) sum += logp[i - 1][row.ids[i]].item<double>();
    }
    expected.push_back(sum);
  }
  std::vector<size_t> all(rows.size());
  std::iota(all.begin(), all.end(), 0);
  for (const bool packing : {true, false}) {
    SCOPED_TRACE(packing ? "packed" : "padded");
    const Batch batch = MakeInput(rows, all, packing, tokenizer->pad_id());
    const torch::Tensor hidden =
        model->Hidden(batch.input_ids, batch.layout, {});
    const CausalTargets targets = SelectCausalTargets(hidden, batch);
    const TokenLogps token =
        ChunkedTokenLogps(targets.hidden, model->head(), targets.labels, 7);
    const torch::Tensor sums =
        torch::zeros({static_cast<int64_t>(rows.size())}, torch::kFloat32)
            .index_add(0, targets.example, token.logps);
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_NEAR(sums[i].item<double>(), expected[i], 1e-4) << "row " << i;
    }
  }
}

// A DPO run stopped and resumed ends with the weights of the uninterrupted
// run, with LoRA and with full fine-tuning (whose reference comes back from
// the checkpoint).
TEST_F(PreferenceTest, AResumedRunEndsWithTheUninterruptedRunsWeights) {
  for (const bool full : {false, true}) {
    SCOPED_TRACE(full ? "full" : "lora");
    testing::TempDir a, b;
    auto spec_in = [&](const std::string& dir) {
      RunSpec spec = Spec(dir, DpoSpec{.rpo_alpha = 0.5});
      spec.data.batch_size = 2;
      spec.schedule.n_epochs = 2;  // 4 steps
      if (full) spec.adapter = FullSpec{};
      return spec;
    };
    Run whole = TrainRun(spec_in(a.path()));
    ASSERT_TRUE(whole.result.ok()) << whole.result.status();
    ASSERT_EQ(whole.steps.size(), 4u);
    EXPECT_GT(whole.steps[0].values.at("nll_loss"), 0.0);

    RunSpec first = spec_in(b.path());
    Run stopped = TrainRun(first, /*stop_after=*/2);
    ASSERT_EQ(stopped.result.status().code(), absl::StatusCode::kAborted);
    ASSERT_EQ(stopped.checkpoints.size(), 1u);
    RunSpec second = spec_in(b.path());
    second.checkpoint.resume_from = stopped.checkpoints[0].dir;
    Run resumed = TrainRun(second);
    ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
    ASSERT_EQ(resumed.steps.size(), 2u);
    EXPECT_EQ(resumed.steps.back().loss, whole.steps.back().loss);
    const std::string file =
        full ? "/adapter/model.safetensors" : "/adapter/adapter_model.safetensors";
    const TensorMap x = Tensors(a.path() + file), y = Tensors(b.path() + file);
    ASSERT_EQ(x.size(), y.size());
    for (const auto& [name, tensor] : x) {
      EXPECT_TRUE(torch::equal(tensor, y.at(name))) << name;
    }
  }
}

// §1.8: with chosen == rejected the odds-ratio term is λ ln 2, and the NLL
// is the plain cross-entropy over every token of the chosen rows, prompt
// included (TRL's), computed here from the model's full logits.
TEST_F(PreferenceTest, OrpoOnIdenticalPairsIsTheNllPlusLambdaLn2) {
  testing::TempDir out;
  Run run = TrainRun(Spec(out.path(), OrpoSpec{.lambda = 0.1}, "same.jsonl"));
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  const StepMetrics& m = run.steps[0];
  EXPECT_NEAR(m.loss - m.values.at("nll_loss"), 0.1 * std::log(2.0), 1e-6);
  EXPECT_NEAR(m.values.at("log_odds_chosen"), 0.0, 1e-6);

  std::unique_ptr<LlamaModel> model =
      LlamaModel::Load(demo_->path() + "/model").value();
  std::unique_ptr<Tokenizer> tokenizer =
      Tokenizer::Load(demo_->path() + "/model").value();
  const PreferenceDataset data =
      LoadPreferenceDataset(demo_->path() + "/same.jsonl", *tokenizer,
                            ChatTemplateFor(*tokenizer, "").value(), 256, 512)
          .value();
  torch::NoGradGuard no_grad;
  double nll = 0;
  int64_t tokens = 0;
  for (const PreferencePair& pair : data.pairs) {
    const std::vector<int32_t>& row = pair.chosen.ids;
    const torch::Tensor ids =
        torch::tensor(std::vector<int64_t>(row.begin(), row.end()))
            .unsqueeze(0);
    const torch::Tensor logp =
        torch::log_softmax(model->Forward(ids, torch::ones_like(ids), false),
                           -1)[0];
    for (size_t i = 1; i < row.size(); ++i) {
      nll -= logp[i - 1][row[i]].item<double>();
      ++tokens;
    }
  }
  EXPECT_NEAR(m.values.at("nll_loss"), nll / tokens, 1e-5);
}

// DPO with full fine-tuning and LISA (γ = 1) on the demo's 2 layers: the
// reference is the initial model, so step 1's loss is ln 2; the layer LISA
// did not draw (the manifest's draw, which is the seeded generator's
// replay) is bit-identical after the step, the drawn one and the
// embeddings and head are not.
TEST_F(PreferenceTest, DpoWithLisaTrainsTheDrawnLayerAndTheEndsOnly) {
  testing::TempDir out;
  RunSpec spec = Spec(out.path(), DpoSpec{});
  spec.adapter = FullSpec{};
  spec.trainable.lisa = LisaSpec{.activated_layers = 1, .interval_steps = 20};
  Run run = TrainRun(spec);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  ASSERT_EQ(run.steps.size(), 1u);
  EXPECT_NEAR(run.steps[0].loss, std::log(2.0), 1e-6);

  const nlohmann::json manifest =
      ReadJsonFile(spec.output.dir + "/" + kSelectionManifest).value();
  ASSERT_EQ(manifest["kind"], "lisa");
  ASSERT_EQ(manifest["draws"].size(), 1u);
  ASSERT_EQ(manifest["draws"][0]["layers"].size(), 1u);
  const int drawn = manifest["draws"][0]["layers"][0].get<int>();
  std::seed_seq seq{static_cast<uint32_t>(spec.seed),
                    static_cast<uint32_t>(spec.seed >> 32), 0x4C495341u};
  std::mt19937_64 rng(seq);
  std::vector<int> order = {0, 1};
  std::shuffle(order.begin(), order.end(), rng);
  EXPECT_EQ(drawn, order[0]);

  const TensorMap before = Tensors(demo_->path() + "/model/model.safetensors");
  const TensorMap after = Tensors(spec.output.dir + "/model.safetensors");
  ASSERT_EQ(before.size(), after.size());
  const std::string drawn_prefix = absl::StrCat("model.layers.", drawn, ".");
  const std::string frozen_prefix =
      absl::StrCat("model.layers.", 1 - drawn, ".");
  int frozen = 0;
  for (const auto& [name, tensor] : before) {
    const bool same = torch::equal(tensor, after.at(name));
    if (absl::StartsWith(name, frozen_prefix)) {
      EXPECT_TRUE(same) << name;
      ++frozen;
    } else if (absl::EndsWith(name, "_proj.weight") ||
               name == "model.embed_tokens.weight" ||
               name == "lm_head.weight") {
      EXPECT_FALSE(same) << name;
    }
  }
  EXPECT_EQ(frozen, 9);  // 7 projections and 2 norms
  EXPECT_FALSE(
      torch::equal(before.at(drawn_prefix + "self_attn.q_proj.weight"),
                   after.at(drawn_prefix + "self_attn.q_proj.weight")));
}

TEST_F(PreferenceTest, AChatFileIsRefusedNamingTheTrainingFile) {
  testing::TempDir out;
  RunSpec spec = Spec(out.path(), DpoSpec{}, "train.jsonl");
  spec.data.training_file_name = "training_file file-chat";
  Run run = TrainRun(spec);
  EXPECT_EQ(run.result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(
      run.result.status().message(),
      "training_file file-chat: line 1: a chat line; preference training"))
      << run.result.status();
}

}  // namespace
}  // namespace lathe::engine
