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
  stats.loss = losses.mean();
  torch::NoGradGuard no_grad;
  const torch::Tensor chosen = beta * chosen_ratio.detach();
  const torch::Tensor rejected = beta * rejected_ratio.detach();
  stats.rewards_chosen = chosen.mean().item<double>();
  stats.rewards_rejected = rejected.mean().item<double>();
  stats.rewards_accuracies =
      chosen.gt(rejected).to(torch::kFloat64).mean().item<double>();
  stats.rewards_margins = (chosen - rejected).mean().item<double>();
  stats.logps_chosen = p.policy_chosen.detach().mean().item<double>();
  stats.logps_rejected = p.policy_rejected.detach().mean().item<double>();
  return stats;
}

OrpoStats OrpoLossOf(const torch::Tensor& w, const torch::Tensor& l,
                     double lambda) {
  const torch::Tensor log_odds =
      (w - l) - (torch::log1p(-torch::exp(w)) - torch::log1p(-torch::exp(l)));
  const torch::Tensor log_sigmoid = torch::log_sigmoid(log_odds);
  OrpoStats stats;
  stats.loss = -lambda * log_sigmoid.mean();
  torch::NoGradGuard no_grad;
  const torch::Tensor chosen = lambda * w.detach();
  const torch::Tensor rejected = lambda * l.detach();
  stats.rewards_chosen = chosen.mean().item<double>();
  stats.rewards_rejected = rejected.mean().item<double>();
  stats.rewards_accuracies =
      chosen.gt(rejected).to(torch::kFloat64).mean().item<double>();
  stats.rewards_margins = (chosen - rejected).mean().item<double>();
  stats.logps_chosen = w.detach().mean().item<double>();
  stats.logps_rejected = l.detach().mean().item<double>();
  stats.log_odds_ratio = log_sigmoid.detach().mean().item<double>();
  stats.log_odds_chosen = log_odds.detach().mean().item<double>();
  return stats;
}

}  // namespace lathe::engine
