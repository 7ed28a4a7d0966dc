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

// LISA's and HFT's changing subsets: a parameter kept keeps its moments and
// count, one added starts as torch's AdamW starts a parameter (its first
// step is a first step, bias correction included), one removed leaves no
// state; a step without a gradient for a parameter does not count for it
// (as torch skips a parameter whose grad is None).
TEST(AdamWTest, SetParamsKeepsDropsAndStartsStatePerParameter) {
  torch::Tensor kept = torch::ones({2, 3}).requires_grad_(true);
  torch::Tensor dropped = torch::ones({4}).requires_grad_(true);
  torch::Tensor added = torch::full({3}, 2.0).requires_grad_(true);
  torch::Tensor kept_ref = kept.detach().clone().requires_grad_(true);
  torch::Tensor added_ref = added.detach().clone().requires_grad_(true);
  AdamW ours({{"kept", kept, true}, {"dropped", dropped, true}},
             AdamWOptions{.weight_decay = 0.1});
  torch::optim::AdamW kept_torch(
      {kept_ref}, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  torch::optim::AdamW added_torch(
      {added_ref}, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  for (int step = 0; step < 3; ++step) {
    SetGrad(kept, step);
    SetGrad(kept_ref, step);
    if (step != 1) SetGrad(dropped, step);  // no gradient at step 1
    ours.Step(1e-2);
    kept_torch.step();
    dropped.mutable_grad().reset();
  }
  EXPECT_EQ(ours.State().at("step/dropped").item<float>(), 2);
  ours.SetParams({{"added", added, true}, {"kept", kept, true}});
  EXPECT_FALSE(ours.State().contains("exp_avg/dropped"));
  EXPECT_EQ(ours.State().at("step/added").item<float>(), 0);
  for (int step = 3; step < 6; ++step) {
    SetGrad(kept, step);
    SetGrad(kept_ref, step);
    SetGrad(added, step);
    SetGrad(added_ref, step);
    ours.Step(1e-2);
    kept_torch.step();
    added_torch.step();
  }
  EXPECT_EQ(ours.steps(), 6);
  EXPECT_EQ(ours.State().at("step/kept").item<float>(), 6);
  EXPECT_TRUE(torch::allclose(kept, kept_ref, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(added, added_ref, 1e-6, 1e-7));
  EXPECT_GT((added - 2).abs().max().item<double>(), 1e-3);
}

}  // namespace
}  // namespace lathe::engine
