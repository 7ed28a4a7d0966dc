// Rejection-sampling fine-tuning's selection (RFT, Yuan et al. 2023;
// METHODS.md §7.2), as the paper's code (OFA-Sys/gsm8k-ScRel
// collect_rejection_sampling.py) computes it: from k sampled reasoning
// paths per question, keep those whose final answer equals the gold one and
// whose calculator annotations <<lhs=rhs>> all hold, one path per distinct
// equation list (the "farest" by edit distance); the RFT set is the gold
// response plus the kept paths. Torch-free: the sampling is the caller's.
#ifndef LATHE_WORKER_ENGINE_DATA_RFT_H_
#define LATHE_WORKER_ENGINE_DATA_RFT_H_

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe::engine {

// How a completion's final answer is read.
struct AnswerExtractor {
  // "gsm8k": the first "#### <number>" (commas dropped), GSM8K's format and
  //          the paper's regex;
  // "last_number": the last number in the text (commas inside it dropped);
  // "regex": the first match of `pattern`'s group 1 (the whole match
  //          without a group), compared as text;
  // "exact": the whole text, spaces at both ends trimmed.
  std::string kind = "gsm8k";
  std::string pattern;  // "regex" only (ECMAScript syntax)
};

// INVALID_ARGUMENT naming "answer_extractor" for an unknown kind or a
// pattern that does not compile.
absl::Status ValidateExtractor(const AnswerExtractor& extractor);

// The answer of `text`, or nullopt when it has none. Numeric kinds return
// the number as text ("12.5").
std::optional<std::string> ExtractAnswer(const AnswerExtractor& extractor,
                                         absl::string_view text);

// Whether two extracted answers are the same: as numbers (12 == 12.0) for
// the numeric kinds, as text otherwise.
bool SameAnswer(const AnswerExtractor& extractor, const std::string& a,
                const std::string& b);

// The value of an arithmetic expression (numbers, + - * / // % **,
// parentheses, unary signs), or nullopt when it is not one or fails
// (division by zero): what the reference's eval() accepts of a calculator
// annotation's left side.
std::optional<double> EvalArithmetic(absl::string_view expression);

// The calculator annotations of `text`: the insides of each <<...>>, in
// order.
std::vector<std::string> Annotations(absl::string_view text);

// Whether every annotation of `text` is "lhs=rhs" with
// |eval(lhs) - rhs| < 1e-3 (a path without annotations passes).
bool AnnotationsHold(absl::string_view text);

// Character-level Levenshtein distance.
size_t EditDistance(absl::string_view a, absl::string_view b);

// How RFT keeps distinct paths of one question.
enum class RftDedupe {
  kEquations,  // one path per equation list, the farest by edit distance
  kExact,      // one path per text
  kNone,       // every correct path
};

// The kept paths of one question, in the order they were first kept:
// `samples` filtered to those whose answer equals `gold_answer` (and, for
// kEquations, whose annotations hold), then deduplicated. Among paths with
// one equation list (annotations joined by '|', spaces removed), the later
// one replaces the kept one when its summed edit distance to the other kept
// paths is larger (the reference's "farest").
std::vector<std::string> SelectRftPaths(const AnswerExtractor& extractor,
                                        const std::string& gold_answer,
                                        const std::vector<std::string>& samples,
                                        RftDedupe dedupe);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_RFT_H_
