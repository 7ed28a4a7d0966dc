#include "worker/engine/inference/generate.h"

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

// Three tiny random models of one tokenizer (METHODS.md §11's defining
// test): a "large" base (wider), a small base, and a small fine-tune (the
// small base with its weights moved).
class LogitFusionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(MakeDemo(small_dir_.path()).ok());
    ASSERT_TRUE(MakeDemo(large_dir_.path()).ok());
    ASSERT_TRUE(ResizeDemoModel(large_dir_.path(),
                                {.hidden_size = 96, .num_attention_heads = 6,
                                 .num_key_value_heads = 3})
                    .ok());
    large_ = LlamaModel::Load(large_dir_.path() + "/model").value();
    small_ = LlamaModel::Load(small_dir_.path() + "/model").value();
    tuned_ = LlamaModel::Load(small_dir_.path() + "/model").value();
    torch::manual_seed(3);
    torch::NoGradGuard no_grad;
    for (auto& [name, w] : tuned_->Weights(/*merge_lora=*/false)) {
      w.add_(torch::randn_like(w) * 0.05);
    }
  }

  // The last position's logits of `m` on `ids`, computed plainly.
  static torch::Tensor Plain(const LlamaModel& m,
                             const std::vector<int64_t>& ids) {
    torch::NoGradGuard no_grad;
    const torch::Tensor input =
        torch::tensor(ids, torch::kInt64).view({1, (int64_t)ids.size()});
    return m.Forward(input, torch::ones_like(input), false)[0][-1];
  }

  testing::TempDir small_dir_, large_dir_;
  std::unique_ptr<LlamaModel> large_, small_, tuned_;
  const std::vector<int64_t> prefix_ = {1, 5, 9, 14, 3};
};

TEST_F(LogitFusionTest, EftReducesToEachModelInItsLimits) {
  // ft = base (small): the fused distribution is the large model's.
  LogitFusion same{.expert = small_.get(), .anti_expert = small_.get()};
  EXPECT_LT((torch::softmax(NextLogits(*large_, prefix_, &same), -1) -
             torch::softmax(Plain(*large_, prefix_), -1))
                .abs()
                .max()
                .item<double>(),
            1e-6);
  // Large base = small base: the fused distribution is the fine-tune's.
  LogitFusion eft{.expert = tuned_.get(), .anti_expert = small_.get()};
  EXPECT_LT((torch::softmax(NextLogits(*small_, prefix_, &eft), -1) -
             torch::softmax(Plain(*tuned_, prefix_), -1))
                .abs()
                .max()
                .item<double>(),
            1e-6);
  // Logits and log-probabilities give the same softmax.
  const torch::Tensor by_logprobs =
      torch::log_softmax(Plain(*large_, prefix_), -1) +
      (torch::log_softmax(Plain(*tuned_, prefix_), -1) -
       torch::log_softmax(Plain(*small_, prefix_), -1));
  EXPECT_LT((torch::softmax(NextLogits(*large_, prefix_, &eft), -1) -
             torch::softmax(by_logprobs, -1))
                .abs()
                .max()
                .item<double>(),
            1e-6);
}

// Greedy decoding with alpha 0.7 takes, at every step, the argmax of the
// fused logits computed by hand from the three models.
TEST_F(LogitFusionTest, GreedyTokensAreTheArgmaxOfTheHandFusedLogits) {
  LogitFusion proxy{
      .expert = tuned_.get(), .anti_expert = small_.get(), .alpha = 0.7};
  const std::vector<int32_t> prompt(prefix_.begin(), prefix_.end());
  absl::StatusOr<std::vector<int32_t>> out =
      Generate(*large_, prompt, {.max_new_tokens = 5}, &proxy);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 5u);
  std::vector<int64_t> ids = prefix_;
  for (int32_t token : *out) {
    const torch::Tensor fused =
        Plain(*large_, ids) + 0.7 * (Plain(*tuned_, ids) - Plain(*small_, ids));
    EXPECT_EQ(token, fused.argmax().item<int64_t>());
    ids.push_back(token);
  }
  // The fusion matters here: the large model alone decodes otherwise.
  absl::StatusOr<std::vector<int32_t>> plain =
      Generate(*large_, prompt, {.max_new_tokens = 5});
  ASSERT_TRUE(plain.ok());
  EXPECT_NE(*plain, *out);
}

TEST_F(LogitFusionTest, AnExpertWithASmallerVocabularyIsRefused) {
  testing::TempDir wide;
  ASSERT_TRUE(MakeDemo(wide.path()).ok());
  ASSERT_TRUE(ResizeDemoModel(wide.path(), {.vocab_size = 4096}).ok());
  std::unique_ptr<LlamaModel> big_vocab =
      LlamaModel::Load(wide.path() + "/model").value();
  LogitFusion fusion{.expert = tuned_.get(), .anti_expert = small_.get()};
  absl::StatusOr<std::vector<int32_t>> out =
      Generate(*big_vocab, {1, 2}, {.max_new_tokens = 2}, &fusion);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("share a tokenizer"),
            std::string::npos)
      << out.status();
}

}  // namespace
}  // namespace lathe::engine
