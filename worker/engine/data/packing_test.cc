#include "worker/engine/data/packing.h"

#include "gtest/gtest.h"
#include "worker/engine/model/random_model_test_util.h"

namespace lathe::engine {
namespace {

using testing::Trainable;

// Four examples of different lengths; prompts carry no loss, and the first
// example is all loss (plain text).
std::vector<Example> Examples() {
  const std::vector<std::pair<int, int>> prompt_answer = {
      {0, 9}, {5, 3}, {2, 11}, {6, 1}};
  std::vector<Example> out;
  int id = 3;
  for (auto [prompt, answer] : prompt_answer) {
    Example e;
    for (int i = 0; i < prompt + answer; ++i) {
      e.ids.push_back((id++ * 13) % 50);
      e.loss_mask.push_back(i >= prompt ? 1 : 0);
    }
    out.push_back(e);
  }
  return out;
}

TEST(PackingTest, LaysExamplesEndToEndWithRestartingPositions) {
  const std::vector<Example> examples = Examples();
  const Batch batch = PackBatch(examples, {2, 0, 3});
  EXPECT_EQ(batch.input_ids.sizes().vec(), (std::vector<int64_t>{1, 29}));
  EXPECT_EQ(batch.layout.segments,
            (std::vector<std::vector<int64_t>>{{13, 9, 7}}));
  EXPECT_EQ(batch.tokens, 29);
  EXPECT_EQ(batch.padding, 0);
  const torch::Tensor positions = batch.layout.position_ids[0];
  EXPECT_EQ(positions[0].item<int64_t>(), 0);
  EXPECT_EQ(positions[12].item<int64_t>(), 12);
  EXPECT_EQ(positions[13].item<int64_t>(), 0);  // example 0 starts
  EXPECT_EQ(positions[22].item<int64_t>(), 0);  // example 3 starts
  EXPECT_EQ(batch.input_ids[0][13].item<int64_t>(), examples[0].ids[0]);
  // The first token of each example is never a target, even in plain text
  // where its own mask is 1: nothing predicts across examples.
  EXPECT_FALSE(batch.loss_mask[0][13].item<bool>());
  EXPECT_TRUE(batch.loss_mask[0][14].item<bool>());
  EXPECT_EQ(batch.loss_mask.sum().item<int64_t>(), 11 + 8 + 1);

  const Batch padded = MakeBatch(examples, {2, 0, 3}, 0);
  EXPECT_EQ(padded.tokens, 29);
  EXPECT_EQ(padded.padding, 3 * 13 - 29);
}

// The packed batch's loss, defined as the unpacked batch's mean: the sum of
// the per-token losses over all examples / their total target count; so
// its gradients are the per-example gradients weighted by target share.
void ExpectPackedEqualsOneByOne(Trainable trainable, AttentionKernel kernel) {
  std::unique_ptr<LlamaModel> model =
      testing::RandomModel(testing::TinyConfig(), trainable);
  const std::vector<Example> examples = Examples();
  const std::vector<size_t> order = {1, 3, 0, 2};
  auto loss_of = [&](const Batch& batch) {
    return CausalLmLoss(
        torch::linear(
            model->Hidden(batch.input_ids, batch.layout, {.attention = kernel}),
            model->head()),
        batch);
  };

  int64_t total = 0;
  for (size_t i : order) total += Targets(MakeBatch(examples, {i}, 0));
  double want_loss = 0;
  for (size_t i : order) {
    LossStats one = loss_of(MakeBatch(examples, {i}, 0));
    const double share = static_cast<double>(one.targets) / total;
    (one.loss * share).backward();
    want_loss += one.loss.item<double>() * share;
  }
  const TensorMap want = testing::TakeGrads(*model, trainable);

  LossStats packed = loss_of(PackBatch(examples, order));
  packed.loss.backward();
  EXPECT_EQ(packed.targets, total);
  EXPECT_NEAR(packed.loss.item<double>(), want_loss, 1e-5 * want_loss);
  testing::ExpectSameGrads(testing::TakeGrads(*model, trainable), want, 1e-5,
                           1e-6);
}

TEST(PackingTest, PackedLossAndLoraGradientsEqualOneByOne) {
  ExpectPackedEqualsOneByOne(Trainable::kLora, AttentionKernel::kExplicit);
}

TEST(PackingTest, PackedGradientsOfEveryWeightEqualOneByOne) {
  ExpectPackedEqualsOneByOne(Trainable::kAll, AttentionKernel::kExplicit);
}

TEST(PackingTest, FusedAttentionPackedEqualsOneByOne) {
  if (!FusedAttentionAvailable()) {
    GTEST_SKIP() << "at::scaled_dot_product_attention needs LibTorch 2.x";
  }
  ExpectPackedEqualsOneByOne(Trainable::kLora, AttentionKernel::kFused);
}

}  // namespace
}  // namespace lathe::engine
