#include "worker/engine/loss/preference.h"

#include "absl/strings/str_cat.h"

namespace lathe::engine {

absl::StatusOr<PreferenceLoss> ParsePreferenceLoss(const std::string& name) {
  if (name == "sigmoid") return PreferenceLoss::kSigmoid;
  if (name == "robust") return PreferenceLoss::kRobust;
  if (name == "hinge") return PreferenceLoss::kHinge;
  if (name == "ipo") return PreferenceLoss::kIpo;
  return absl::InvalidArgumentError(
      absl::StrCat("field \"loss_type\" is \"", name,
                   "\"; known: sigmoid, robust, hinge, ipo"));
}

RewardStats RewardStats::Of(const torch::Tensor& chosen_rewards,
                            const torch::Tensor& rejected_rewards,
                            const torch::Tensor& policy_chosen,
                            const torch::Tensor& policy_rejected) {
  torch::NoGradGuard no_grad;
  const torch::Tensor chosen = chosen_rewards.detach();
  const torch::Tensor rejected = rejected_rewards.detach();
  RewardStats stats;
  stats.rewards_chosen = chosen.mean().item<double>();
  stats.rewards_rejected = rejected.mean().item<double>();
  stats.rewards_accuracies =
      chosen.gt(rejected).to(torch::kFloat64).mean().item<double>();
  stats.rewards_margins = (chosen - rejected).mean().item<double>();
  stats.logps_chosen = policy_chosen.detach().mean().item<double>();
  stats.logps_rejected = policy_rejected.detach().mean().item<double>();
  return stats;
}

std::map<std::string, double> RewardStats::Named() const {
  return {{"rewards/chosen", rewards_chosen},
          {"rewards/rejected", rewards_rejected},
          {"rewards/accuracies", rewards_accuracies},
          {"rewards/margins", rewards_margins},
          {"logps/chosen", logps_chosen},
          {"logps/rejected", logps_rejected}};
}

PreferenceStats PreferenceLossOf(const PairLogps& p,
                                 const PreferenceOptions& o) {
  const torch::Tensor chosen_ratio =
      p.policy_chosen - p.reference_chosen.detach();
  const torch::Tensor rejected_ratio =
      p.policy_rejected - p.reference_rejected.detach();
  const torch::Tensor h = chosen_ratio - rejected_ratio;
  const double beta = o.beta, eps = o.label_smoothing;
  torch::Tensor losses;
  switch (o.loss) {
    case PreferenceLoss::kSigmoid:
      losses = -(1 - eps) * torch::log_sigmoid(beta * h) -
               eps * torch::log_sigmoid(-beta * h);
      break;
    case PreferenceLoss::kRobust:
      losses = (-(1 - eps) * torch::log_sigmoid(beta * h) +
                eps * torch::log_sigmoid(-beta * h)) /
               (1 - 2 * eps);
      break;
    case PreferenceLoss::kHinge:
      losses = torch::relu(1 - beta * h);
      break;
    case PreferenceLoss::kIpo:
      losses = (h - 1 / (2 * beta)).pow(2);
      break;
  }
  PreferenceStats stats;
  static_cast<RewardStats&>(stats) =
      RewardStats::Of(beta * chosen_ratio, beta * rejected_ratio,
                      p.policy_chosen, p.policy_rejected);
  stats.loss = losses.mean();
  return stats;
}

OrpoStats OrpoLossOf(const torch::Tensor& w, const torch::Tensor& l,
                     double lambda) {
  const torch::Tensor log_odds =
      (w - l) - (torch::log1p(-torch::exp(w)) - torch::log1p(-torch::exp(l)));
  const torch::Tensor log_sigmoid = torch::log_sigmoid(log_odds);
  OrpoStats stats;
  static_cast<RewardStats&>(stats) = RewardStats::Of(lambda * w, lambda * l, w, l);
  stats.loss = -lambda * log_sigmoid.mean();
  torch::NoGradGuard no_grad;
  stats.log_odds_ratio = log_sigmoid.detach().mean().item<double>();
  stats.log_odds_chosen = log_odds.detach().mean().item<double>();
  return stats;
}

}  // namespace lathe::engine
