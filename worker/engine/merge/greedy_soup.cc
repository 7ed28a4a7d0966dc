#include "worker/engine/merge/greedy_soup.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/status_macros.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/inference/score.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

absl::StatusOr<std::vector<int>> SelectGreedySoup(
    int n, const SoupEvaluator& evaluate,
    const std::function<void(const SoupStep&)>& on_step) {
  auto report = [&](const SoupStep& step) {
    if (on_step) on_step(step);
  };
  std::vector<double> losses;
  for (int i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(const double loss, evaluate({i}));
    losses.push_back(loss);
    report({.phase = SoupStep::Phase::kScored,
            .input = i,
            .input_loss = loss,
            .soup_loss = loss,
            .best_loss = loss});
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  // NaN last: it compares false with everything.
  auto key = [&](int i) {
    return std::isnan(losses[i]) ? INFINITY : losses[i];
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return key(a) < key(b); });
  std::vector<int> soup = {order[0]};
  double best = losses[order[0]];
  report({.phase = SoupStep::Phase::kTried,
          .input = order[0],
          .input_loss = best,
          .soup_loss = best,
          .best_loss = best,
          .kept = true,
          .soup_size = 1});
  for (int j = 1; j < n; ++j) {
    std::vector<int> candidate = soup;
    candidate.push_back(order[j]);
    ASSIGN_OR_RETURN(const double loss, evaluate(candidate));
    // Strictly lower only; NaN never is. A NaN first best is beaten by any
    // number.
    const bool kept = loss < best || (std::isnan(best) && !std::isnan(loss));
    if (kept) {
      soup = std::move(candidate);
      best = loss;
    }
    report({.phase = SoupStep::Phase::kTried,
            .input = order[j],
            .input_loss = losses[order[j]],
            .soup_loss = loss,
            .best_loss = best,
            .kept = kept,
            .soup_size = static_cast<int>(soup.size())});
  }
  return soup;
}

absl::StatusOr<std::unique_ptr<ValidationScorer>> ValidationScorer::Create(
    const GreedySoupSpec& spec, const MergeBase& base) {
  ASSIGN_OR_RETURN(const Placement placement, ResolvePlacement(spec.device));
  ASSIGN_OR_RETURN(
      std::unique_ptr<Tokenizer> tokenizer,
      WithErrorKind(Tokenizer::Load(base.dir()), ErrorKind::kModel));
  ASSIGN_OR_RETURN(
      Dataset data,
      WithErrorKind(
          LoadChatDataset(spec.validation_file, *tokenizer,
                          ChatTemplateFor(*tokenizer, spec.chat_template),
                          spec.max_seq_len, spec.validation_file_name),
          ErrorKind::kUserData, "merge.soup.validation_file"));
  return std::unique_ptr<ValidationScorer>(
      new ValidationScorer(base.config(), placement, std::move(data.examples)));
}

absl::StatusOr<double> ValidationScorer::Loss(const TensorMap& weights) const {
  TensorMap float32;
  for (const auto& [name, t] : weights) float32[name] = t.to(torch::kFloat32);
  ASSIGN_OR_RETURN(
      std::unique_ptr<LlamaModel> model,
      LlamaModel::FromTensors(config_, std::move(float32), "the soup"));
  model->Place(placement_.device, placement_.compute, placement_.compute);
  double total = 0;
  int64_t targets = 0;
  for (const Example& example : examples_) {
    ASSIGN_OR_RETURN(const Scores scores, ScoreExample(*model, example));
    for (size_t t = 1; t < example.ids.size(); ++t) {
      if (example.loss_mask[t] != 1) continue;
      total -= scores.logprobs[t - 1];
      ++targets;
    }
  }
  return targets > 0 ? total / targets : NAN;
}

}  // namespace lathe::engine
