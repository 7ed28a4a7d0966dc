// Greedy soups (METHODS.md §5.1, Wortsman et al.): which inputs a uniform
// soup keeps, judged by held-out loss.
#ifndef LATHE_WORKER_ENGINE_MERGE_GREEDY_SOUP_H_
#define LATHE_WORKER_ENGINE_MERGE_GREEDY_SOUP_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/merge/merge_input.h"
#include "worker/engine/merge/merge_spec.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

// One step of the selection: first each input alone is scored (kScored,
// in input order), then the soup starts with the best and each next input,
// in order of its own loss, is tried (kTried).
struct SoupStep {
  enum class Phase { kScored, kTried };
  Phase phase = Phase::kScored;
  int input = 0;          // index in the merge's inputs
  double input_loss = 0;  // the input's own held-out loss
  double soup_loss = 0;   // kTried: the soup's loss with the input in
  double best_loss = 0;   // the soup's loss after this step
  bool kept = false;      // kTried: whether the input joined the soup
  int soup_size = 0;      // inputs in the soup after this step
};

// The held-out loss of the uniform soup of the inputs `ingredients`.
using SoupEvaluator =
    std::function<absl::StatusOr<double>(const std::vector<int>& ingredients)>;

// Greedy selection over inputs 0..n-1: score each alone; sort them by loss,
// ascending (a NaN loss sorts last; ties keep input order); start the soup
// with the first; add each next one only if the soup's loss with it is
// strictly lower than the best so far (model-soups' `>` on accuracy).
// Returns the kept inputs in the order they joined. Errors from `evaluate`.
// `on_step` (may be empty) sees every step.
absl::StatusOr<std::vector<int>> SelectGreedySoup(
    int n, const SoupEvaluator& evaluate,
    const std::function<void(const SoupStep&)>& on_step);

// The mean loss of a model's weights over a chat (or prompt/completion,
// text) validation file's target tokens: the sum of -log p over every
// example's masked targets divided by their count (ScoreExample, the
// engine's scoring path). Thread-compatible.
class ValidationScorer {
 public:
  // Reads and tokenizes `spec.validation_file` with the base's tokenizer
  // and chat template. Errors as LoadChatDataset (kUserData, field
  // "merge.soup.validation_file") and ResolvePlacement.
  static absl::StatusOr<std::unique_ptr<ValidationScorer>> Create(
      const GreedySoupSpec& spec, const MergeBase& base);

  // The loss of the base's architecture with `weights` (Hugging Face
  // names, any float dtype). Errors as LlamaModel::FromTensors and
  // ScoreExample.
  absl::StatusOr<double> Loss(const TensorMap& weights) const;

 private:
  ValidationScorer(const ModelConfig& config, Placement placement,
                   std::vector<Example> examples)
      : config_(config),
        placement_(placement),
        examples_(std::move(examples)) {}

  const ModelConfig config_;
  const Placement placement_;
  const std::vector<Example> examples_;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MERGE_GREEDY_SOUP_H_
