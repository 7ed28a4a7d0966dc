// CLEAR-style confidence filtering (Chen & Mueller, arXiv 2403.12776;
// METHODS.md §8.2, Lathe's practical version): score each (prompt,
// response) pair and drop the confidently bad ones before fine-tuning.
// Torch-free: the signals come from a model through the caller
// (inference/clear.h); this is the similarity, the score and the filter.
//
// Scores:
//   kLogLikelihood  the length-normalised log p(y | x): the mean
//                   log-probability of the response's trained tokens
//                   under the scoring model (METHODS's cheap score; Lathe
//                   scores with the model it is given, the base or a
//                   fine-tune, not a k-fold model fine-tuned on the
//                   other folds);
//   kConfidence     alpha * O + (1 - alpha) * S (BSDetector's form): O the
//                   mean similarity of k sampled responses to y, S the
//                   self-reflection probability P(Correct) / (P(Correct) +
//                   P(Incorrect)).
#ifndef LATHE_WORKER_ENGINE_DATA_CLEAR_H_
#define LATHE_WORKER_ENGINE_DATA_CLEAR_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/data/rft.h"

namespace lathe::engine {

enum class ClearScore { kLogLikelihood, kConfidence };

// "log_likelihood" / "confidence": the score's name in reports and
// reasons.
const char* ClearScoreName(ClearScore score);

// SQuAD's token F1: both texts lower-cased, ASCII punctuation and the
// articles a / an / the removed, split at whitespace; the harmonic mean of
// the precision and recall of the common tokens (as multisets). 1 when
// both are empty, 0 when only one is.
double TokenF1(absl::string_view prediction, absl::string_view reference);

// O's similarity of a sampled response to the reference: with an
// extractor, 1 or 0 by SameAnswer of the extracted answers when the
// reference has one (a sample without one scores 0); otherwise (no
// extractor, or a reference without an answer) TokenF1.
double ResponseSimilarity(const AnswerExtractor* extractor,
                          absl::string_view sample,
                          absl::string_view reference);

// What a scorer measured of one pair; the fields the score needs.
struct ClearSignals {
  double log_likelihood = 0;  // kLogLikelihood
  double consistency = 0;     // O, kConfidence
  double reflection = 0;      // S, kConfidence
};

struct ClearOptions {
  ClearScore score = ClearScore::kConfidence;
  double alpha = 0.7;  // BSDetector's (METHODS.md: UNVERIFIED recollection)
  // Drop pairs scoring below this; unset: no threshold. A NaN score (a
  // pair without a response token) counts as the lowest.
  std::optional<double> threshold;
  // Also drop the floor(drop_fraction * n) lowest-scoring pairs (ties: the
  // earlier line counts as lower); in [0, 1).
  double drop_fraction = 0;
};

struct ClearVerdict {
  double score = 0;
  ClearSignals signals;
  // Why it is dropped: "clear_<score>_below_<threshold>" and/or
  // "clear_<score>_in_bottom_<drop_fraction>"; empty when kept.
  std::vector<std::string> reasons;
};

// INVALID_ARGUMENT naming the option for alpha outside [0, 1],
// drop_fraction outside [0, 1) or a non-finite threshold.
absl::Status CheckClearOptions(const ClearOptions& options);

// Scores pairs 0..n-1 with `signals(i)` and filters them. The score is
// signals.log_likelihood (kLogLikelihood) or alpha * consistency +
// (1 - alpha) * reflection (kConfidence). Errors as CheckClearOptions,
// and `signals`' own.
absl::StatusOr<std::vector<ClearVerdict>> ClearFilter(
    int64_t n,
    const std::function<absl::StatusOr<ClearSignals>(int64_t)>& signals,
    const ClearOptions& options);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_CLEAR_H_
