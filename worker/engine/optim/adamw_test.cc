#include "worker/engine/optim/adamw.h"

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

// Sets a fixed pseudo-random gradient on `t` for step `step`.
void SetGrad(torch::Tensor& t, int step) {
  t.mutable_grad() =
      torch::sin(torch::arange(t.numel(), torch::kFloat32) * (step + 1))
          .reshape(t.sizes());
}

TEST(AdamWTest, MatchesTorchAdamW) {
  torch::manual_seed(1);
  torch::Tensor ours = torch::randn({3, 4}).requires_grad_(true);
  torch::Tensor ours_norm = torch::randn({4}).requires_grad_(true);
  const torch::Tensor start = ours.detach().clone();
  torch::Tensor theirs = ours.detach().clone().requires_grad_(true);
  torch::Tensor theirs_norm = ours_norm.detach().clone().requires_grad_(true);
  AdamW adamw({{"w", ours, true}, {"n", ours_norm, false}},
              AdamWOptions{.weight_decay = 0.1});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{theirs},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).weight_decay(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{theirs_norm},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).weight_decay(0.0)));
  torch::optim::AdamW reference(groups, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 5; ++step) {
    const double lr = 1e-2 * (step + 1);
    for (auto& group : reference.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    SetGrad(ours, step);
    SetGrad(ours_norm, step);
    SetGrad(theirs, step);
    SetGrad(theirs_norm, step);
    adamw.Step(lr);
    reference.step();
  }
  EXPECT_EQ(adamw.steps(), 5);
  EXPECT_TRUE(torch::allclose(ours, theirs, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(ours_norm, theirs_norm, 1e-6, 1e-7));
  EXPECT_GT((ours - start).abs().max().item<double>(), 1e-3);
}

TEST(AdamWTest, RestoredStateContinuesIdentically) {
  torch::Tensor a = torch::ones({2, 2}).requires_grad_(true);
  AdamW first({{"a", a, true}}, AdamWOptions{.weight_decay = 0.01});
  for (int step = 0; step < 3; ++step) {
    SetGrad(a, step);
    first.Step(1e-2);
  }
  torch::Tensor b = a.detach().clone().requires_grad_(true);
  AdamW second({{"a", b, true}}, AdamWOptions{.weight_decay = 0.01});
  ASSERT_TRUE(second.Restore(first.steps(), first.State()).ok());
  for (int step = 3; step < 6; ++step) {
    SetGrad(a, step);
    SetGrad(b, step);
    first.Step(1e-2);
    second.Step(1e-2);
  }
  EXPECT_TRUE(torch::equal(a, b));

  TensorMap bad = first.State();
  bad["exp_avg/a"] = torch::zeros({3});
  absl::Status status = second.Restore(6, bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("exp_avg/a"), std::string::npos);
  bad.erase("exp_avg_sq/a");
  bad["exp_avg/a"] = torch::zeros({2, 2});
  status = second.Restore(6, bad);
  EXPECT_NE(status.message().find("exp_avg_sq/a\" is missing"),
            std::string::npos);
  EXPECT_EQ(second.steps(), 6);  // unchanged by the failed restores
}

}  // namespace
}  // namespace lathe::engine
