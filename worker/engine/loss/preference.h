// Preference losses over sequence log-probabilities (../shared/METHODS.md
// §1.3, TRL v0.24's dpo_loss): DPO (sigmoid, with label smoothing for
// cDPO), robust DPO, hinge (SLiC), IPO, and the metrics TRL reports (§1.5).
// The recipe computes the log-probabilities (summed over completion
// tokens; for IPO, averaged); this computes the per-pair losses from them.
#ifndef LATHE_WORKER_ENGINE_LOSS_PREFERENCE_H_
#define LATHE_WORKER_ENGINE_LOSS_PREFERENCE_H_

#include <torch/torch.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace lathe::engine {

enum class PreferenceLoss { kSigmoid, kRobust, kHinge, kIpo };

// "sigmoid", "robust", "hinge", "ipo"; INVALID_ARGUMENT naming
// `loss_type` otherwise.
absl::StatusOr<PreferenceLoss> ParsePreferenceLoss(const std::string& name);

struct PreferenceOptions {
  PreferenceLoss loss = PreferenceLoss::kSigmoid;
  double beta = 0.1;             // (0, 2] as OpenAI bounds it
  double label_smoothing = 0.0;  // ε: sigmoid and robust; [0, 0.5)
};

// Sequence log-probabilities of a batch of pairs, each [P].
struct PairLogps {
  torch::Tensor policy_chosen;
  torch::Tensor policy_rejected;
  torch::Tensor reference_chosen;  // zeros for reference-free
  torch::Tensor reference_rejected;
};

// The batch means TRL reports for a preference step (§1.5): the rewards
// of the two replies, the strict share of pairs whose chosen reward is the
// larger (0 at init), their mean difference, and the policy's logps.
struct RewardStats {
  double rewards_chosen = 0;
  double rewards_rejected = 0;
  double rewards_accuracies = 0;
  double rewards_margins = 0;
  double logps_chosen = 0;
  double logps_rejected = 0;

  // From per-pair rewards and policy logps, each [P].
  static RewardStats Of(const torch::Tensor& chosen_rewards,
                        const torch::Tensor& rejected_rewards,
                        const torch::Tensor& policy_chosen,
                        const torch::Tensor& policy_rejected);
  // By TRL's names: "rewards/chosen", ..., "logps/rejected".
  std::map<std::string, double> Named() const;
};

// Rewards are β(πw − rw) and β(πl − rl).
struct PreferenceStats : RewardStats {
  torch::Tensor loss;  // scalar: mean over pairs of the per-pair loss
};

// Per pair, with h = (πw − rw) − (πl − rl):
//   sigmoid  −(1−ε)·logσ(βh) − ε·logσ(−βh)
//   robust   [−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1 − 2ε)
//   hinge    relu(1 − βh)
//   ipo      (h − 1/(2β))²   (the logps given length-averaged)
// Gradients flow to the policy logps only.
PreferenceStats PreferenceLossOf(const PairLogps& logps,
                                 const PreferenceOptions& options);

// ORPO's odds-ratio term (METHODS.md §1.8, TRL v0.24 odds_ratio_loss) from
// the mean token log-probabilities ℓw, ℓl of the completions, each [P]:
// log_odds = (ℓw − ℓl) − (log1p(−exp ℓw) − log1p(−exp ℓl)), and the term
// λ · mean(−logσ(log_odds)) that is added to the NLL.
// Rewards are λ·ℓw and λ·ℓl (TRL's, with no reference); also the means of
// logσ(log_odds) and log_odds.
struct OrpoStats : RewardStats {
  torch::Tensor loss;  // scalar: λ · mean(−logσ(log_odds))
  double log_odds_ratio = 0;
  double log_odds_chosen = 0;
};
OrpoStats OrpoLossOf(const torch::Tensor& mean_logps_chosen,
                     const torch::Tensor& mean_logps_rejected, double lambda);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_LOSS_PREFERENCE_H_
