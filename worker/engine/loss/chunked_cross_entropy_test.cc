#include "worker/engine/loss/chunked_cross_entropy.h"

#include "gtest/gtest.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/model/random_model_test_util.h"

namespace lathe::engine {
namespace {

using testing::Trainable;

// Three chat-like examples: a prompt (no loss) then an answer (loss).
std::vector<Example> Examples() {
  std::vector<Example> out;
  const std::vector<std::pair<int, int>> prompt_answer = {
      {4, 6}, {7, 2}, {3, 9}};
  int id = 1;
  for (auto [prompt, answer] : prompt_answer) {
    Example e;
    for (int i = 0; i < prompt + answer; ++i) {
      e.ids.push_back((id++ * 17) % 50);
      e.loss_mask.push_back(i >= prompt ? 1 : 0);
    }
    out.push_back(e);
  }
  return out;
}

struct Outcome {
  double loss = 0;
  int64_t targets = 0, correct = 0;
  TensorMap grads;
};

// The reference: full logits [B, T, V] through CausalLmLoss.
Outcome FullLogits(const LlamaModel& model, const Batch& batch,
                   Trainable trainable) {
  LossStats stats = CausalLmLoss(
      torch::linear(model.Hidden(batch.input_ids, batch.layout, {}),
                    model.head()),
      batch);
  stats.loss.backward();
  return {stats.loss.item<double>(), stats.targets, stats.correct,
          testing::TakeGrads(model, trainable)};
}

Outcome Chunked(const LlamaModel& model, const Batch& batch,
                Trainable trainable, int64_t chunk) {
  LossStats stats =
      ChunkedCausalLmLoss(model.Hidden(batch.input_ids, batch.layout, {}),
                          model.head(), batch, chunk);
  stats.loss.backward();
  return {stats.loss.item<double>(), stats.targets, stats.correct,
          testing::TakeGrads(model, trainable)};
}

void ExpectChunkedEqualsFullLogits(const ModelConfig& c, Trainable trainable) {
  std::unique_ptr<LlamaModel> model = testing::RandomModel(c, trainable);
  const std::vector<Example> examples = Examples();
  const Batch batch = MakeBatch(examples, {0, 1, 2}, /*pad_id=*/0);
  const Outcome want = FullLogits(*model, batch, trainable);
  ASSERT_EQ(want.targets, 6 + 2 + 9);  // the answers' tokens
  // 1: a chunk per target; 7: chunks that straddle examples; 1000: one.
  for (int64_t chunk : {1, 7, 1000}) {
    SCOPED_TRACE(chunk);
    const Outcome got = Chunked(*model, batch, trainable, chunk);
    EXPECT_NEAR(got.loss, want.loss, 1e-5 * std::abs(want.loss));
    EXPECT_EQ(got.targets, want.targets);
    EXPECT_EQ(got.correct, want.correct);
    testing::ExpectSameGrads(got.grads, want.grads, 1e-5, 1e-6);
  }
}

TEST(ChunkedCrossEntropyTest, EqualsFullLogitsLossAndLoraGradients) {
  ExpectChunkedEqualsFullLogits(testing::TinyConfig(), Trainable::kLora);
}

TEST(ChunkedCrossEntropyTest, EqualsFullLogitsGradientsOfEveryWeightUntied) {
  ExpectChunkedEqualsFullLogits(testing::TinyConfig(), Trainable::kAll);
}

TEST(ChunkedCrossEntropyTest, EqualsFullLogitsGradientsOfEveryWeightTied) {
  ModelConfig c = testing::TinyConfig();
  c.tie_word_embeddings = true;
  ExpectChunkedEqualsFullLogits(c, Trainable::kAll);
}

TEST(ChunkedCrossEntropyTest, HoldsOneChunkOfLogitsAndNoneForPrompts) {
  std::unique_ptr<LlamaModel> model =
      testing::RandomModel(testing::TinyConfig(), Trainable::kLora);
  const Batch batch = MakeBatch(Examples(), {0, 1, 2}, 0);
  const torch::Tensor hidden = model->Hidden(batch.input_ids, batch.layout, {});
  // 17 targets of 3 x 12 positions; V = 50 float32.
  EXPECT_EQ(
      ChunkedCausalLmLoss(hidden, model->head(), batch, 7).peak_logits_bytes,
      7 * 50 * 4);
  EXPECT_EQ(
      ChunkedCausalLmLoss(hidden, model->head(), batch, 1000).peak_logits_bytes,
      17 * 50 * 4);
}

TEST(ChunkedCrossEntropyTest, WithoutGradientsGivesTheSameLoss) {
  std::unique_ptr<LlamaModel> model =
      testing::RandomModel(testing::TinyConfig(), Trainable::kLora);
  const Batch batch = MakeBatch(Examples(), {0, 1, 2}, 0);
  torch::NoGradGuard no_grad;
  const torch::Tensor hidden = model->Hidden(batch.input_ids, batch.layout, {});
  const LossStats want =
      CausalLmLoss(torch::linear(hidden, model->head()), batch);
  const LossStats got = ChunkedCausalLmLoss(hidden, model->head(), batch, 5);
  EXPECT_NEAR(got.loss.item<double>(), want.loss.item<double>(),
              1e-5 * want.loss.item<double>());
  EXPECT_EQ(got.correct, want.correct);
  EXPECT_FALSE(got.loss.requires_grad());
}

// Per-row log-probabilities, and their gradients for an arbitrary upstream
// gradient (a DPO loss weights each row's log-probability differently),
// equal plain autograd through the full logits.
TEST(ChunkedTokenLogpsTest, EqualsFullLogitsValuesAndGradients) {
  torch::manual_seed(3);
  const int64_t N = 13, C = 8, V = 29;
  const torch::Tensor h0 = torch::randn({N, C}), w0 = torch::randn({V, C});
  const torch::Tensor labels = torch::randint(0, V, {N}, torch::kInt64);
  const torch::Tensor upstream = torch::randn({N});
  torch::Tensor h = h0.clone().requires_grad_(true);
  torch::Tensor w = w0.clone().requires_grad_(true);
  const torch::Tensor plain =
      torch::log_softmax(torch::matmul(h, w.t()), 1)
          .gather(1, labels.unsqueeze(1))
          .squeeze(1);
  (plain * upstream).sum().backward();
  torch::Tensor hc = h0.clone().requires_grad_(true);
  torch::Tensor wc = w0.clone().requires_grad_(true);
  int64_t peak = 0;
  const TokenLogps got = ChunkedTokenLogps(hc, wc, labels, 4, &peak);
  EXPECT_TRUE(torch::allclose(got.logps, plain.detach(), 1e-5, 1e-6));
  (got.logps * upstream).sum().backward();
  EXPECT_TRUE(torch::allclose(hc.grad(), h.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(wc.grad(), w.grad(), 1e-5, 1e-6));
  EXPECT_EQ(peak, 4 * V * 4);  // one chunk of float32 logits
  EXPECT_TRUE(torch::equal(
      got.correct, torch::matmul(h0, w0.t()).argmax(1).eq(labels)));
  // Without gradients: the same numbers, nothing recorded.
  torch::NoGradGuard no_grad;
  const TokenLogps off = ChunkedTokenLogps(hc, wc, labels, 5);
  EXPECT_FALSE(off.logps.requires_grad());
  EXPECT_TRUE(torch::allclose(off.logps, plain.detach(), 1e-5, 1e-6));
}

}  // namespace
}  // namespace lathe::engine
