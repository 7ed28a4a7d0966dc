#include "worker/engine/reports/reports.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

// METHODS.md §9.1's defining test: on the fixture's six conversations
// (token ids and assistant masks as Hugging Face computed them), each
// conversation's held-out loss equals transformers' loss_all and
// loss_assistant, and the set's is the label-token-weighted mean of them,
// whatever the batching.
TEST(ReportsTest, HeldOutLossEqualsTransformersPerConversationAndWeighted) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Load(fixture + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  std::ifstream in(fixture + "/expected.jsonl");
  std::vector<Example> examples;
  std::vector<double> loss_all, loss_assistant;
  std::vector<int64_t> n_all, n_assistant;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json row = nlohmann::json::parse(line);
    Example e;
    for (int id : row["input_ids"]) e.ids.push_back(id);
    int64_t n = 0;
    for (size_t t = 0; t < row["assistant_mask"].size(); ++t) {
      const int m = row["assistant_mask"][t];
      // Position 0 is never a target (labels are shifted by one).
      e.loss_mask.push_back(t > 0 && m == 1 ? 1 : 0);
      n += e.loss_mask.back();
    }
    examples.push_back(e);
    loss_all.push_back(row["loss_all"]);
    loss_assistant.push_back(row["loss_assistant"]);
    n_all.push_back(static_cast<int64_t>(e.ids.size()) - 1);
    n_assistant.push_back(n);
  }
  ASSERT_EQ(examples.size(), 6u);
  double all_sum = 0, assistant_sum = 0;
  int64_t all_n = 0, assistant_n = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const std::vector<Example> one = {examples[i]};
    const HeldOutLoss all = HeldOutLossOf(**model, one, true, 1, 0);
    const HeldOutLoss assistant = HeldOutLossOf(**model, one, false, 1, 0);
    EXPECT_NEAR(all.loss, loss_all[i], 1e-5) << i;
    EXPECT_EQ(all.tokens, n_all[i]);
    EXPECT_NEAR(assistant.loss, loss_assistant[i], 1e-5) << i;
    EXPECT_EQ(assistant.tokens, n_assistant[i]);
    all_sum += loss_all[i] * n_all[i];
    all_n += n_all[i];
    assistant_sum += loss_assistant[i] * n_assistant[i];
    assistant_n += n_assistant[i];
  }
  for (int batch : {1, 4}) {
    const HeldOutLoss all = HeldOutLossOf(**model, examples, true, batch, 0);
    EXPECT_NEAR(all.loss, all_sum / all_n, 1e-5) << batch;
    EXPECT_EQ(all.tokens, all_n);
    const HeldOutLoss assistant =
        HeldOutLossOf(**model, examples, false, batch, 0);
    EXPECT_NEAR(assistant.loss, assistant_sum / assistant_n, 1e-5) << batch;
  }
}

// A random orthogonal d x d matrix: Q of the QR of a Gaussian.
torch::Tensor Orthogonal(int64_t d) {
  return std::get<0>(torch::linalg_qr(torch::randn({d, d}, torch::kFloat64)));
}

// METHODS.md §9.2's defining test: W0 = Q1 diag(2^(-j/2)) Q2^T (64 x 64).
// A rank-one update of norm 100 along u = (sum of Q1's first 8 columns) /
// sqrt(8) makes exactly one intruder among the top 10 (its best |cosine|
// with U0 is 1/sqrt(8)); 0.1 W0 makes none.
TEST(ReportsTest, IntruderDimensionsOfTheWorkedExample) {
  torch::manual_seed(11);
  const int64_t d = 64;
  const torch::Tensor q1 = Orthogonal(d), q2 = Orthogonal(d);
  const torch::Tensor sigma =
      torch::pow(2.0, -torch::arange(d, torch::kFloat64) / 2);
  const torch::Tensor w0 = q1.matmul(torch::diag(sigma)).matmul(q2.t());
  const torch::Tensor u = q1.narrow(1, 0, 8).sum(1) / std::sqrt(8.0);
  const torch::Tensor v = q2.narrow(1, 0, 8).sum(1) / std::sqrt(8.0);
  const torch::Tensor intruded = w0 + 100 * torch::outer(u, v);

  const std::vector<double> sims = IntruderSimilarities(w0, intruded, 10);
  ASSERT_EQ(sims.size(), 10u);
  int intruders = 0;
  for (double s : sims) intruders += s < 0.5 ? 1 : 0;
  EXPECT_EQ(intruders, 1);
  EXPECT_NEAR(sims[0], 1 / std::sqrt(8.0), 5e-3);  // the top one is about u
  for (size_t i = 1; i < sims.size(); ++i) EXPECT_GT(sims[i], 0.5) << i;

  const std::vector<double> aligned =
      IntruderSimilarities(w0, w0 + 0.1 * w0, 10);
  for (double s : aligned) EXPECT_NEAR(s, 1, 1e-3);
  // A matrix with fewer singular vectors than asked gives what it has.
  EXPECT_EQ(IntruderSimilarities(w0.narrow(0, 0, 4), w0.narrow(0, 0, 4), 10)
                .size(),
            4u);
}

}  // namespace
}  // namespace lathe::engine
