#include "worker/engine/model/attention.h"

#include "gtest/gtest.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/model/random_model_test_util.h"

namespace lathe::engine {
namespace {

using testing::Trainable;

// A row of three segments against a dense block-diagonal causal mask,
// written out: the explicit path matches it on any LibTorch.
TEST(AttentionTest, SegmentsEqualABlockDiagonalCausalMask) {
  torch::manual_seed(3);
  const std::vector<int64_t> lengths = {3, 5, 2};
  const int64_t T = 10, H = 2, D = 4;
  const torch::Tensor q = torch::randn({1, H, T, D});
  const torch::Tensor k = torch::randn({1, H, T, D});
  const torch::Tensor v = torch::randn({1, H, T, D});
  torch::Tensor allowed = torch::zeros({T, T}, torch::kBool);
  int64_t start = 0;
  for (int64_t n : lengths) {
    for (int64_t i = start; i < start + n; ++i) {
      for (int64_t j = start; j <= i; ++j) allowed[i][j] = true;
    }
    start += n;
  }
  const torch::Tensor scores = (torch::matmul(q, k.transpose(2, 3)) / 2.0)
                                   .masked_fill(allowed.logical_not(), -1e30);
  const torch::Tensor want = torch::matmul(torch::softmax(scores, -1), v);
  EXPECT_TRUE(torch::allclose(
      SegmentedCausalAttention(q, k, v, {lengths}, AttentionKernel::kExplicit),
      want, 1e-5, 1e-6));
}

// Scores in bfloat16 (a mixed-precision run) mask the future without
// overflowing, and stay near the float32 result.
TEST(AttentionTest, ExplicitPathTakesBfloat16) {
  torch::manual_seed(4);
  const torch::Tensor q = torch::randn({1, 2, 6, 4});
  const torch::Tensor k = torch::randn({1, 2, 6, 4});
  const torch::Tensor v = torch::randn({1, 2, 6, 4});
  auto attend = [](const torch::Tensor& q, const torch::Tensor& k,
                   const torch::Tensor& v) {
    return SegmentedCausalAttention(q, k, v, {{6}}, AttentionKernel::kExplicit);
  };
  const torch::Tensor bf16 =
      attend(q.to(torch::kBFloat16), k.to(torch::kBFloat16),
             v.to(torch::kBFloat16).to(torch::kFloat32))
          .to(torch::kFloat32);
  EXPECT_TRUE(torch::allclose(bf16, attend(q, k, v), 0.05, 0.05));
}

// On LibTorch 2.x: the fused kernel gives the explicit path's logits and
// gradients through the whole model, packed and padded.
TEST(AttentionTest, FusedEqualsExplicitLogitsAndGradients) {
  if (!FusedAttentionAvailable()) {
    GTEST_SKIP() << "at::scaled_dot_product_attention needs LibTorch 2.x";
  }
  std::unique_ptr<LlamaModel> model =
      testing::RandomModel(testing::TinyConfig(), Trainable::kAll);
  std::vector<Example> examples(3);
  for (int e = 0; e < 3; ++e) {
    for (int t = 0; t < 5 + 4 * e; ++t) {
      examples[e].ids.push_back((5 * t + 3 * e + 2) % 50);
      examples[e].loss_mask.push_back(1);
    }
  }
  for (const Batch& batch :
       {PackBatch(examples, {0, 1, 2}), MakeBatch(examples, {0, 1, 2}, 0)}) {
    auto run = [&](AttentionKernel kernel) {
      torch::Tensor logits = torch::linear(
          model->Hidden(batch.input_ids, batch.layout, {.attention = kernel}),
          model->head());
      CausalLmLoss(logits, batch).loss.backward();
      return std::make_pair(logits.detach(),
                            testing::TakeGrads(*model, Trainable::kAll));
    };
    const auto [want_logits, want_grads] = run(AttentionKernel::kExplicit);
    const auto [got_logits, got_grads] = run(AttentionKernel::kFused);
    EXPECT_TRUE(torch::allclose(got_logits, want_logits, 1e-5, 1e-5));
    testing::ExpectSameGrads(got_grads, want_grads, 1e-5, 1e-6);
  }
}

}  // namespace
}  // namespace lathe::engine
