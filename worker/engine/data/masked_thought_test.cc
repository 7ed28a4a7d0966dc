// METHODS.md §3 defining tests for Masked Thought, at the collator level.
#include "worker/engine/data/masked_thought.h"

#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/packing.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

constexpr int64_t kMaskId = 7;

// Examples with a prompt of `prompt` tokens and a response of `response`.
std::vector<Example> Examples(int count, int prompt, int response) {
  std::vector<Example> out;
  for (int e = 0; e < count; ++e) {
    Example x;
    for (int i = 0; i < prompt + response; ++i) {
      x.ids.push_back(100 + (e * 31 + i * 17) % 900);
      x.loss_mask.push_back(i >= prompt ? 1 : 0);
    }
    out.push_back(x);
  }
  return out;
}

std::vector<size_t> All(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

// Tests 1 and 2: the prompt inputs are untouched, the labels are the
// unmasked ids; masked positions are targets holding kMaskId. Padded and
// packed alike.
TEST(MaskedThoughtTest, MasksOnlyResponseInputsAndKeepsLabels) {
  const std::vector<Example> examples = Examples(6, 5, 9);
  for (bool packed : {false, true}) {
    Batch batch = packed ? PackBatch(examples, All(6))
                         : MakeBatch(examples, All(6), /*pad_id=*/0);
    const torch::Tensor original = batch.input_ids.clone();
    const int64_t masked = MaskTargets(&batch, 0.5, kMaskId, 42, 3, 0);
    EXPECT_GT(masked, 0);
    EXPECT_TRUE(torch::equal(batch.labels, original));
    const torch::Tensor changed = batch.input_ids.ne(original);
    EXPECT_EQ(changed.sum().item<int64_t>(), masked);
    // Only targets change, and the prompt (never a target) never does.
    EXPECT_FALSE(
        changed.logical_and(batch.loss_mask.logical_not()).any().item<bool>());
    EXPECT_TRUE(
        batch.input_ids.index({changed}).eq(kMaskId).all().item<bool>());
  }
}

// Test 4: p = 0.3 over >= 2000 response tokens masks 0.3 +- 0.03, and two
// steps (epochs) draw different masks; the same step draws the same.
TEST(MaskedThoughtTest, MaskedFractionIsTheRateAndEachStepDrawsAfresh) {
  const std::vector<Example> examples = Examples(100, 4, 25);
  auto masked_at = [&](int64_t step) {
    Batch batch = MakeBatch(examples, All(100), 0);
    const int64_t n = MaskTargets(&batch, 0.3, kMaskId, 42, step, 0);
    const int64_t targets = Targets(batch);
    EXPECT_GE(targets, 2000);
    EXPECT_NEAR(static_cast<double>(n) / targets, 0.3, 0.03);
    return batch.input_ids;
  };
  EXPECT_FALSE(torch::equal(masked_at(1), masked_at(2)));
  EXPECT_TRUE(torch::equal(masked_at(5), masked_at(5)));
}

TEST(MaskedThoughtTest, RateScheduleAndMaskToken) {
  MaskedThoughtSpec spec{.mask_rate = 0.2};
  // The main repo: min(p * step / (max_steps * 2/3 + 1), p).
  EXPECT_EQ(MaskRateAt(spec, 0, 30), 0);
  EXPECT_DOUBLE_EQ(MaskRateAt(spec, 7, 30), 0.2 * 7 / (30 * 2.0 / 3 + 1));
  EXPECT_DOUBLE_EQ(MaskRateAt(spec, 29, 30), 0.2);
  spec.schedule = "constant";
  EXPECT_DOUBLE_EQ(MaskRateAt(spec, 0, 30), 0.2);
  EXPECT_EQ(*MaskTokenId("pad", 3, 100), 3);
  EXPECT_EQ(*MaskTokenId("99", 3, 100), 99);
  EXPECT_EQ(MaskTokenId("100", 3, 100).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MaskTokenId("x", 3, 100).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Test 3: with p = 1 every response input is the mask id, and the loss is
// the cross-entropy of predicting the original response under all-mask
// inputs (computed here with plain tensor ops, one conversation at a
// time); it differs from the p = 0 loss, which is the fixture's
// loss_assistant (Hugging Face's).
TEST(MaskedThoughtTest, FullMaskingLossMatchesAPlainReference) {
  const std::string fixture = testing::TinyLlamaFixture();
  if (fixture.empty()) GTEST_SKIP() << "no shared fixtures";
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Load(fixture + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  std::ifstream in(fixture + "/expected.jsonl");
  std::vector<Example> examples;
  std::vector<double> hf_losses;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    Example e;
    for (int64_t id : j["input_ids"]) e.ids.push_back(static_cast<int32_t>(id));
    for (int m : j["assistant_mask"]) e.loss_mask.push_back(m);
    examples.push_back(e);
    hf_losses.push_back(j["loss_assistant"].get<double>());
  }
  ASSERT_GE(examples.size(), 2u);
  torch::NoGradGuard no_grad;
  const LlamaModel& m = **model;
  auto loss_of = [&](const Batch& batch) {
    return CausalLmLoss(
               torch::linear(m.Hidden(batch.input_ids, batch.layout, {}),
                             m.head()),
               batch)
        .loss.item<double>();
  };
  const int64_t mask_id = 0;  // <unk>

  Batch unmasked = MakeBatch(examples, {0}, /*pad_id=*/0);
  EXPECT_EQ(MaskTargets(&unmasked, 0, mask_id, 42, 1, 0), 0);
  const double p0 = loss_of(unmasked);
  EXPECT_NEAR(p0, hf_losses[0], 1e-4);

  Batch batch = PackBatch(examples, All(examples.size()));
  const int64_t targets = Targets(batch);
  EXPECT_EQ(MaskTargets(&batch, 1, mask_id, 42, 1, 0), targets);
  EXPECT_TRUE(
      batch.input_ids.index({batch.loss_mask}).eq(mask_id).all().item<bool>());
  const double p1 = loss_of(batch);

  // The reference: each conversation alone, its response inputs set to the
  // mask id by hand, -log softmax(logits[t - 1])[original id t] averaged
  // over all response tokens.
  double sum = 0;
  int64_t count = 0;
  for (const Example& e : examples) {
    const auto T = static_cast<int64_t>(e.ids.size());
    torch::Tensor ids = torch::empty({1, T}, torch::kInt64);
    for (int64_t t = 0; t < T; ++t) {
      ids[0][t] = t > 0 && e.loss_mask[t] ? mask_id : e.ids[t];
    }
    const torch::Tensor logits = torch::linear(
        m.Hidden(ids,
                 SequenceLayout::Padded(torch::ones({1, T}, torch::kInt64)),
                 {}),
        m.head())[0];
    const torch::Tensor logp =
        torch::log_softmax(logits.to(torch::kFloat64), -1);
    for (int64_t t = 1; t < T; ++t) {
      if (!e.loss_mask[t]) continue;
      sum -= logp[t - 1][e.ids[t]].item<double>();
      ++count;
    }
  }
  EXPECT_EQ(count, targets);
  EXPECT_NEAR(p1, sum / count, 1e-4);
  EXPECT_GT(std::abs(p1 - loss_of(PackBatch(examples, All(examples.size())))),
            1e-3);
}

}  // namespace
}  // namespace lathe::engine
