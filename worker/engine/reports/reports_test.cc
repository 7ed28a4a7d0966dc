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

// PEFT's mitigation (§9.2) on the worked example, against the same steps
// written out here in float64: a rank-1 LoRA whose s B A is the intruding
// 100 u v^T. The one intruder's part is scaled by lambda and the change
// re-factorised to rank 1 with sqrt(S) on each side; an aligned update
// is left as it was, and lambda = 1 gives a rank-2 update's product back.
TEST(ReportsTest, MitigationScalesTheIntruderPartAsPeftDoes) {
  torch::manual_seed(11);
  const int64_t d = 64;
  const torch::Tensor q1 = Orthogonal(d), q2 = Orthogonal(d);
  const torch::Tensor sigma = torch::pow(2.0, -torch::arange(d, torch::kFloat64) / 2);
  const torch::Tensor w0 = q1.matmul(torch::diag(sigma)).matmul(q2.t());
  const torch::Tensor u = q1.narrow(1, 0, 8).sum(1) / std::sqrt(8.0);
  const torch::Tensor v = q2.narrow(1, 0, 8).sum(1) / std::sqrt(8.0);
  const double scale = 2;  // alpha / r
  const torch::Tensor b = (u * std::sqrt(50.0)).unsqueeze(1);  // [64, 1]
  const torch::Tensor a = (v * std::sqrt(50.0)).unsqueeze(0);  // [1, 64]
  const double lambda = 0.75;
  auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };

  // The reference, step by step.
  const torch::Tensor w_ft = w0 + scale * b.matmul(a);
  auto [uf, sf, vhf] = torch::linalg_svd(w_ft, false);
  const torch::Tensor u0 = std::get<0>(torch::linalg_svd(w0, false));
  const torch::Tensor sims = std::get<0>(uf.narrow(1, 0, 10).t().matmul(u0).abs().max(1));
  ASSERT_LT(sims[0].item<double>(), 0.5);
  for (int i = 1; i < 10; ++i) ASSERT_GT(sims[i].item<double>(), 0.5) << i;
  const torch::Tensor w_mit =
      w_ft + (lambda - 1) * sf[0].item<double>() * torch::outer(uf.select(1, 0), vhf[0]);
  auto [ud, sd, vhd] = torch::linalg_svd((w_mit - w0) / scale, false);
  const torch::Tensor want = sd[0].item<double>() * torch::outer(ud.select(1, 0), vhd[0]);

  const MitigatedFactors m =
      MitigateIntruderFactors(f32(w0), f32(b), f32(a), scale, 10, 0.5, lambda, 1);
  EXPECT_EQ(m.intruders, 1);
  EXPECT_NEAR(m.min_similarity, sims[0].item<double>(), 1e-4);
  ASSERT_EQ(m.b.sizes(), b.sizes());
  ASSERT_EQ(m.a.sizes(), a.sizes());
  const torch::Tensor got = m.b.to(torch::kFloat64).matmul(m.a.to(torch::kFloat64));
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>());
  // The change is about 0.75 of the update's 100 / scale = 50 now.
  EXPECT_NEAR(sd[0].item<double>(), 0.75 * 50, 1.0);
  EXPECT_NEAR(m.b.norm().item<double>(), m.a.norm().item<double>(), 1e-4);  // sqrt(S) each

  // Aligned (0.05 of W0's top two directions): no intruder, unchanged.
  const torch::Tensor root = torch::sqrt(0.05 * sigma.narrow(0, 0, 2));
  const torch::Tensor ab = q1.narrow(1, 0, 2) * root.unsqueeze(0);
  const torch::Tensor aa = root.unsqueeze(1) * q2.narrow(1, 0, 2).t();
  const MitigatedFactors none =
      MitigateIntruderFactors(f32(w0), f32(ab), f32(aa), scale, 10, 0.5, lambda, 2);
  EXPECT_EQ(none.intruders, 0);
  EXPECT_TRUE(torch::equal(none.b, f32(ab)));
  EXPECT_TRUE(torch::equal(none.a, f32(aa)));
  // lambda = 1 removes nothing: a rank-2 update's product comes back.
  const torch::Tensor b2 = torch::cat({b, 0.3 * torch::randn({d, 1}, torch::kFloat64)}, 1);
  const torch::Tensor a2 = torch::cat({a, 0.3 * torch::randn({1, d}, torch::kFloat64)}, 0);
  const MitigatedFactors same =
      MitigateIntruderFactors(f32(w0), f32(b2), f32(a2), scale, 10, 0.5, 1.0, 2);
  EXPECT_GE(same.intruders, 1);
  EXPECT_LT((same.b.matmul(same.a).to(torch::kFloat64) - b2.matmul(a2)).abs().max().item<double>(),
            1e-4 * b2.matmul(a2).abs().max().item<double>());
}

}  // namespace
}  // namespace lathe::engine
