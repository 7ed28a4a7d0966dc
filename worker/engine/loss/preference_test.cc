#include "worker/engine/loss/preference.h"

#include <cmath>

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

// METHODS.md §1.7's worked numbers: πw = −10, πl = −12, rw = rl = −11,
// β = 0.1, so h = 2.
PairLogps Worked() {
  return {.policy_chosen = torch::tensor({-10.0}, torch::kFloat64),
          .policy_rejected = torch::tensor({-12.0}, torch::kFloat64),
          .reference_chosen = torch::tensor({-11.0}, torch::kFloat64),
          .reference_rejected = torch::tensor({-11.0}, torch::kFloat64)};
}

double Loss(PreferenceLoss loss, double eps = 0) {
  return PreferenceLossOf(Worked(), {.loss = loss, .beta = 0.1,
                                     .label_smoothing = eps})
      .loss.item<double>();
}

TEST(PreferenceLossTest, WorkedNumbersOfTheSpecification) {
  EXPECT_NEAR(Loss(PreferenceLoss::kSigmoid), 0.598139, 1e-6);
  EXPECT_NEAR(Loss(PreferenceLoss::kSigmoid, 0.1), 0.618139, 1e-6);
  EXPECT_NEAR(Loss(PreferenceLoss::kRobust, 0.1), 0.573139, 1e-6);
  EXPECT_NEAR(Loss(PreferenceLoss::kHinge), 0.8, 1e-12);
  // (2 − 1/(2·0.1))² = 9, by hand.
  EXPECT_NEAR(Loss(PreferenceLoss::kIpo), 9.0, 1e-12);
  const PreferenceStats s =
      PreferenceLossOf(Worked(), {.loss = PreferenceLoss::kSigmoid});
  EXPECT_NEAR(s.rewards_chosen, 0.1, 1e-12);
  EXPECT_NEAR(s.rewards_rejected, -0.1, 1e-12);
  EXPECT_NEAR(s.rewards_margins, 0.2, 1e-12);
  EXPECT_EQ(s.rewards_accuracies, 1.0);
  EXPECT_EQ(s.logps_chosen, -10.0);
  EXPECT_EQ(s.logps_rejected, -12.0);
}

TEST(PreferenceLossTest, AtInitTheLossIsLn2ForSigmoidAndAQuarterOverBetaSquaredForIpo) {
  // Policy == reference: h = 0 for every pair.
  const torch::Tensor logps = torch::tensor({-3.0, -7.5}, torch::kFloat64);
  const PairLogps same = {logps, logps - 1, logps, logps - 1};
  for (double eps : {0.0, 0.2}) {
    for (double beta : {0.1, 1.5}) {
      const PreferenceStats s = PreferenceLossOf(
          same, {.loss = PreferenceLoss::kSigmoid, .beta = beta,
                 .label_smoothing = eps});
      EXPECT_NEAR(s.loss.item<double>(), std::log(2.0), 1e-12);
      EXPECT_EQ(s.rewards_accuracies, 0.0);  // strict comparison
      EXPECT_EQ(s.rewards_margins, 0.0);
    }
  }
  EXPECT_NEAR(PreferenceLossOf(same, {.loss = PreferenceLoss::kIpo, .beta = 0.1})
                  .loss.item<double>(),
              25.0, 1e-9);
}

TEST(PreferenceLossTest, GradientsReachThePolicyOnlyAndVanishWhenChosenEqualsRejected) {
  torch::Tensor chosen = torch::tensor({-4.0, -5.0}, torch::kFloat64)
                             .requires_grad_(true);
  torch::Tensor ref = torch::tensor({-4.5, -4.0}, torch::kFloat64)
                          .requires_grad_(true);
  // The same sequence as chosen and rejected: h = 0 whatever the weights.
  PreferenceStats s = PreferenceLossOf({chosen, chosen, ref, ref},
                                       {.loss = PreferenceLoss::kSigmoid});
  s.loss.backward();
  EXPECT_LT(chosen.grad().abs().max().item<double>(), 1e-12);
  EXPECT_FALSE(ref.grad().defined());

  // d/dπw of −logσ(βh) = −β σ(−βh) / P, checked by hand at h = 2.
  torch::Tensor w = torch::tensor({-10.0}, torch::kFloat64).requires_grad_(true);
  PreferenceStats t = PreferenceLossOf(
      {w, torch::tensor({-12.0}, torch::kFloat64),
       torch::tensor({-11.0}, torch::kFloat64),
       torch::tensor({-11.0}, torch::kFloat64)},
      {.loss = PreferenceLoss::kSigmoid, .beta = 0.1});
  t.loss.backward();
  const double expected = -0.1 / (1 + std::exp(0.2));
  EXPECT_NEAR(w.grad().item<double>(), expected, 1e-12);
}

TEST(PreferenceLossTest, UnknownLossTypesAreRefusedByName) {
  EXPECT_TRUE(ParsePreferenceLoss("ipo").ok());
  const absl::Status s = ParsePreferenceLoss("kto").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("\"loss_type\""), std::string::npos);
}

// METHODS.md §1.8's worked numbers: ℓw = ln 0.5, ℓl = ln 0.25 give
// log_odds = ln((0.5/0.5)/(0.25/0.75)) = ln 3, logσ(ln 3) = ln 0.75.
TEST(PreferenceLossTest, OrpoWorkedNumbers) {
  const OrpoStats s =
      OrpoLossOf(torch::tensor({std::log(0.5)}, torch::kFloat64),
                 torch::tensor({std::log(0.25)}, torch::kFloat64), 0.1);
  EXPECT_NEAR(s.log_odds_chosen, std::log(3.0), 1e-12);
  EXPECT_NEAR(s.log_odds_ratio, std::log(0.75), 1e-12);
  EXPECT_NEAR(s.loss.item<double>(), 0.0287682, 1e-7);
  EXPECT_NEAR(s.rewards_chosen, 0.1 * std::log(0.5), 1e-12);
  EXPECT_EQ(s.rewards_accuracies, 1.0);
}

// With chosen == rejected the odds ratio is 1: the term is λ ln 2 and its
// gradient is zero.
TEST(PreferenceLossTest, OrpoEqualPairsGiveLambdaLn2AndNoGradient) {
  torch::Tensor w = torch::tensor({-1.3, -0.2}, torch::kFloat64)
                        .requires_grad_(true);
  const OrpoStats s = OrpoLossOf(w, w, 0.1);
  EXPECT_NEAR(s.loss.item<double>(), 0.1 * std::log(2.0), 1e-12);
  s.loss.backward();
  EXPECT_LT(w.grad().abs().max().item<double>(), 1e-15);
}

}  // namespace
}  // namespace lathe::engine
