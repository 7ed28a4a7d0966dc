// Prompt tuning (METHODS.md §10): the virtual tokens are embeddings placed
// before every example, the folder is PEFT's PROMPT_TUNING layout, and only
// the prompt trains. Checked against the base model run on the virtual
// tokens' own ids, and against the tokenizer's ids for the text init.
#include "worker/engine/adapters/prompt_tuning.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

class PromptTuningTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  static std::unique_ptr<LlamaModel> Model() {
    return LlamaModel::Load(demo_->path() + "/model").value();
  }
  static std::unique_ptr<Tokenizer> Tok() {
    return Tokenizer::Load(demo_->path() + "/model").value();
  }
  static RunSpec Spec(const std::string& out, int n) {
    RunSpec spec = ParseRunSpec(ReadJsonFile(demo_->path() + "/spec.json").value(),
                                demo_->path())
                       .value();
    spec.adapter = PromptTuningSpec{.num_virtual_tokens = n};
    spec.schedule.n_epochs = 1;
    spec.optimizer.learning_rate = 3e-2;
    spec.data.validation_file.clear();
    spec.output.dir = out + "/adapter";
    spec.checkpoint.dir = out + "/ckpt";
    return spec;
  }
  static testing::TempDir* demo_;
};
testing::TempDir* PromptTuningTest::demo_ = nullptr;

// The text init with N longer than the text repeats its tokens' embedding
// rows cyclically (PEFT's TEXT init).
TEST_F(PromptTuningTest, TextInitRepeatsTheTextsEmbeddingsCyclically) {
  std::unique_ptr<LlamaModel> model = Model();
  std::unique_ptr<Tokenizer> tokenizer = Tok();
  const PromptTuningSpec spec{.num_virtual_tokens = 25, .init = "text",
                              .init_text = "Paris is red"};
  ASSERT_TRUE(AttachPromptTuning(*model, spec, tokenizer.get()).ok());
  const std::vector<int32_t> ids =
      tokenizer->EncodeWithSpecialTokens("Paris is red").value().ids;
  ASSERT_LT(ids.size(), 25u);
  const torch::Tensor embed = model->Weights(false).at("model.embed_tokens.weight");
  const torch::Tensor rows = model->prompt_embeddings();
  ASSERT_EQ(rows.sizes(), (std::vector<int64_t>{25, 64}));
  for (int64_t i = 0; i < 25; ++i) {
    EXPECT_TRUE(torch::equal(rows[i], embed[ids[i % ids.size()]])) << "row " << i;
  }
  EXPECT_TRUE(rows.requires_grad());
  // Only the prompt is trainable: the model's own weights stay frozen.
  for (const auto& [name, w] : model->Weights(false)) {
    EXPECT_FALSE(w.requires_grad()) << name;
  }
  const std::vector<AdamW::Param> params = TrainableParams(*model, AdapterSpec(spec));
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params[0].name, "prompt_embeddings");
  // Text init without text, and text without the text init, are refused.
  EXPECT_EQ(AttachPromptTuning(*model, {.init = "text"}, tokenizer.get()).message(),
            "field \"adapter.init_text\" is required with init text");
}

// Virtual tokens whose rows are the embeddings of ids v make the model
// compute what the base computes on v followed by the input: the logits of
// the real tokens are the base's logits[N:].
TEST_F(PromptTuningTest, VirtualTokensAreTheirEmbeddingsBeforeTheInput) {
  std::unique_ptr<LlamaModel> model = Model();
  const torch::Tensor embed = model->Weights(false).at("model.embed_tokens.weight");
  const torch::Tensor v = torch::tensor({5, 17, 3, 40}, torch::kInt64);
  const torch::Tensor ids = torch::tensor({{7, 8, 9, 10, 11, 12}}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const torch::Tensor base =
      model->Forward(torch::cat({v.unsqueeze(0), ids}, 1),
                     torch::ones({1, 10}, torch::kInt64), false);
  model->SetPromptEmbeddings(embed.index_select(0, v).clone());
  const torch::Tensor tuned = model->Forward(ids, torch::ones_like(ids), false);
  ASSERT_EQ(tuned.sizes(), (std::vector<int64_t>{1, 6, base.size(2)}));
  EXPECT_TRUE(torch::allclose(tuned, base.slice(1, 4), 1e-5, 1e-5));
  // Packed: two examples in one row, each behind its own virtual tokens.
  std::vector<Example> examples = {{{1, 7, 8, 9}, {0, 1, 1, 1}},
                                   {{1, 10, 11}, {0, 1, 1}}};
  PrependVirtualTokens(examples, 4);
  EXPECT_EQ(examples[1].ids, (std::vector<int32_t>{0, 0, 0, 0, 1, 10, 11}));
  EXPECT_EQ(examples[1].loss_mask, (std::vector<uint8_t>{0, 0, 0, 0, 0, 1, 1}));
  SequenceLayout layout;
  layout.position_ids =
      torch::tensor({{0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6}}, torch::kInt64);
  layout.segments = {{8, 7}};
  std::vector<int64_t> row;
  for (const Example& e : examples) row.insert(row.end(), e.ids.begin(), e.ids.end());
  const torch::Tensor packed =
      torch::linear(model->Hidden(torch::tensor(row).unsqueeze(0), layout, {}),
                    model->head());
  // Without adapters the virtual tokens are bypassed: raw ids give the
  // base model's hidden states (computed below with none attached).
  const torch::Tensor raw = ids;
  const torch::Tensor bypassed = model->Hidden(
      raw, SequenceLayout::Padded(torch::ones_like(raw)), {.adapters = false});
  model->SetPromptEmbeddings(torch::Tensor());
  EXPECT_TRUE(torch::equal(
      bypassed, model->Hidden(raw, SequenceLayout::Padded(torch::ones_like(raw)), {})));
  const torch::Tensor second = model->Forward(
      torch::cat({v, torch::tensor({1, 10, 11}, torch::kInt64)}).unsqueeze(0),
      torch::ones({1, 7}, torch::kInt64), false);
  EXPECT_TRUE(torch::allclose(packed.slice(1, 8), second, 1e-5, 1e-5));
}

// A prompt tuning run trains, saves PEFT's layout, loads back, and resumes
// exactly.
TEST_F(PromptTuningTest, TrainsSavesPeftsLayoutAndResumes) {
  testing::TempDir a, b;
  std::vector<double> losses;
  absl::StatusOr<TrainResult> r = Train(
      Spec(a.path(), 8), {.on_step = [&](const StepMetrics& m) { losses.push_back(m.loss); }});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(losses.size(), 20u);
  EXPECT_LT(losses.back(), losses.front());
  const std::string dir = a.path() + "/adapter";
  const TensorMap tensors = LoadSafetensors(dir + "/adapter_model.safetensors").value();
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors.begin()->first, "prompt_embeddings");
  EXPECT_EQ(tensors.begin()->second.sizes(), (std::vector<int64_t>{8, 64}));
  const nlohmann::json config = ReadJsonFile(dir + "/adapter_config.json").value();
  EXPECT_EQ(config["peft_type"], "PROMPT_TUNING");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["num_virtual_tokens"], 8);
  EXPECT_EQ(config["token_dim"], 64);
  EXPECT_EQ(config["num_transformer_submodules"], 1);
  EXPECT_EQ(config["prompt_tuning_init"], "RANDOM");
  EXPECT_EQ(config["inference_mode"], true);
  // Loads back through the one adapter loader score and generate use.
  std::unique_ptr<LlamaModel> model = Model();
  absl::StatusOr<AdapterSpec> loaded = LoadTrained(*model, dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(AdapterType(*loaded), "prompt_tuning");
  EXPECT_TRUE(torch::equal(model->prompt_embeddings(), tensors.begin()->second));

  // Stopped after 7 steps and resumed: the same prompt as uninterrupted.
  RunSpec spec = Spec(b.path(), 8);
  int64_t done = 0;
  std::string checkpoint;
  absl::StatusOr<TrainResult> stopped = Train(
      spec, {.on_step = [&](const StepMetrics& m) { done = m.step; },
             .should_stop =
                 [&] {
                   return done >= 7 ? StopRequest::kCheckpointAndStop : StopRequest::kNone;
                 },
             .on_checkpoint = [&](const CheckpointInfo& c) { checkpoint = c.dir; }});
  ASSERT_EQ(stopped.status().code(), absl::StatusCode::kAborted) << stopped.status();
  spec.checkpoint.resume_from = checkpoint;
  ASSERT_TRUE(Train(spec, {}).ok());
  EXPECT_TRUE(torch::equal(
      LoadSafetensors(b.path() + "/adapter/adapter_model.safetensors")
          .value()
          .at("prompt_embeddings"),
      tensors.begin()->second));
}

}  // namespace
}  // namespace lathe::engine
