#include "worker/engine/data/clear.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace lathe::engine {
namespace {

// SQuAD's normalize_answer, then split.
std::vector<std::string> NormalizedTokens(absl::string_view text) {
  std::string clean;
  for (char c : text) {
    if (std::ispunct(static_cast<unsigned char>(c))) continue;
    clean.push_back(
        static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  std::vector<std::string> out;
  std::string word;
  auto flush = [&] {
    if (!word.empty() && word != "a" && word != "an" && word != "the")
      out.push_back(word);
    word.clear();
  };
  for (char c : clean) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      flush();
    } else {
      word.push_back(c);
    }
  }
  flush();
  return out;
}

}  // namespace

const char* ClearScoreName(ClearScore score) {
  return score == ClearScore::kLogLikelihood ? "log_likelihood" : "confidence";
}

double TokenF1(absl::string_view prediction, absl::string_view reference) {
  const std::vector<std::string> p = NormalizedTokens(prediction);
  const std::vector<std::string> r = NormalizedTokens(reference);
  if (p.empty() || r.empty()) return p.empty() && r.empty() ? 1 : 0;
  std::map<std::string, int> counts;
  for (const std::string& t : r) ++counts[t];
  int common = 0;
  for (const std::string& t : p) {
    if (auto it = counts.find(t); it != counts.end() && it->second > 0) {
      --it->second;
      ++common;
    }
  }
  if (common == 0) return 0;
  const double precision = static_cast<double>(common) / p.size();
  const double recall = static_cast<double>(common) / r.size();
  return 2 * precision * recall / (precision + recall);
}

double ResponseSimilarity(const AnswerExtractor* extractor,
                          absl::string_view sample,
                          absl::string_view reference) {
  if (extractor != nullptr) {
    if (std::optional<std::string> gold =
            ExtractAnswer(*extractor, reference)) {
      const std::optional<std::string> got = ExtractAnswer(*extractor, sample);
      return got.has_value() && SameAnswer(*extractor, *got, *gold) ? 1 : 0;
    }
  }
  return TokenF1(sample, reference);
}

absl::Status CheckClearOptions(const ClearOptions& o) {
  if (!(o.alpha >= 0 && o.alpha <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("alpha: must be in [0, 1], got ", o.alpha));
  }
  if (!(o.drop_fraction >= 0 && o.drop_fraction < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "drop_fraction: must be in [0, 1), got ", o.drop_fraction));
  }
  if (o.threshold.has_value() && !std::isfinite(*o.threshold)) {
    return absl::InvalidArgumentError("threshold: must be finite");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ClearVerdict>> ClearFilter(
    int64_t n,
    const std::function<absl::StatusOr<ClearSignals>(int64_t)>& signals,
    const ClearOptions& o) {
  if (absl::Status st = CheckClearOptions(o); !st.ok()) return st;
  const std::string name = ClearScoreName(o.score);
  std::vector<ClearVerdict> out(n);
  for (int64_t i = 0; i < n; ++i) {
    absl::StatusOr<ClearSignals> s = signals(i);
    if (!s.ok()) return s.status();
    out[i].signals = *s;
    out[i].score =
        o.score == ClearScore::kLogLikelihood
            ? s->log_likelihood
            : o.alpha * s->consistency + (1 - o.alpha) * s->reflection;
    // A pair without a score (no response token left) is below any.
    if (o.threshold.has_value() && !(out[i].score >= *o.threshold)) {
      out[i].reasons.push_back(
          absl::StrCat("clear_", name, "_below_", *o.threshold));
    }
  }
  const auto bottom = static_cast<size_t>(std::floor(o.drop_fraction * n));
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const double x = out[a].score, y = out[b].score;
    return std::isnan(x) ? !std::isnan(y) : x < y;
  });
  for (size_t k = 0; k < bottom; ++k) {
    out[order[k]].reasons.push_back(
        absl::StrCat("clear_", name, "_in_bottom_", o.drop_fraction));
  }
  return out;
}

}  // namespace lathe::engine
