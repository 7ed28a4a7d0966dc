#include "worker/engine/data/rft.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace lathe::engine {
namespace {

// A number's text without its commas, if it parses.
std::optional<std::string> NumberText(std::string text) {
  text.erase(std::remove(text.begin(), text.end(), ','), text.end());
  double value = 0;
  if (text.empty() || !absl::SimpleAtod(text, &value)) return std::nullopt;
  return text;
}

// Recursive descent over Python's arithmetic precedence: + -, then * / //
// %, then unary signs, then ** (right-associative, binding tighter than a
// unary sign on its left).
class Arithmetic {
 public:
  explicit Arithmetic(absl::string_view text) : s_(text) {}

  std::optional<double> Parse() {
    std::optional<double> v = Sum();
    Skip();
    if (!v.has_value() || i_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void Skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool Take(absl::string_view op) {
    Skip();
    if (s_.substr(i_, op.size()) != op) return false;
    i_ += op.size();
    return true;
  }
  std::optional<double> Sum() {
    std::optional<double> v = Product();
    while (v.has_value()) {
      if (Take("+")) {
        std::optional<double> r = Product();
        if (!r) return std::nullopt;
        *v += *r;
      } else if (Take("-")) {
        std::optional<double> r = Product();
        if (!r) return std::nullopt;
        *v -= *r;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Product() {
    std::optional<double> v = Unary();
    while (v.has_value()) {
      Skip();
      if (s_.substr(i_, 2) == "**") break;  // a power, Unary's
      std::optional<double> r;
      if (Take("//")) {
        r = Unary();
        if (!r || *r == 0) return std::nullopt;
        *v = std::floor(*v / *r);
      } else if (Take("*")) {
        r = Unary();
        if (!r) return std::nullopt;
        *v *= *r;
      } else if (Take("/")) {
        r = Unary();
        if (!r || *r == 0) return std::nullopt;
        *v /= *r;
      } else if (Take("%")) {
        r = Unary();
        if (!r || *r == 0) return std::nullopt;
        *v = *v - *r * std::floor(*v / *r);  // Python's sign rule
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Unary() {
    if (Take("-")) {
      std::optional<double> v = Unary();
      return v ? std::optional<double>(-*v) : std::nullopt;
    }
    if (Take("+")) return Unary();
    return Power();
  }
  std::optional<double> Power() {
    std::optional<double> base = Atom();
    if (base.has_value() && Take("**")) {
      std::optional<double> exponent = Unary();
      if (!exponent) return std::nullopt;
      const double v = std::pow(*base, *exponent);
      if (!std::isfinite(v)) return std::nullopt;
      return v;
    }
    return base;
  }
  std::optional<double> Atom() {
    if (Take("(")) {
      std::optional<double> v = Sum();
      if (!v || !Take(")")) return std::nullopt;
      return v;
    }
    Skip();
    const size_t start = i_;
    while (i_ < s_.size() &&
           (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.')) {
      ++i_;
    }
    double v = 0;
    if (i_ == start || !absl::SimpleAtod(s_.substr(start, i_ - start), &v)) {
      return std::nullopt;
    }
    return v;
  }

  absl::string_view s_;
  size_t i_ = 0;
};

}  // namespace

absl::Status ValidateExtractor(const AnswerExtractor& e) {
  if (e.kind == "gsm8k" || e.kind == "last_number" || e.kind == "exact") {
    return absl::OkStatus();
  }
  if (e.kind != "regex") {
    return absl::InvalidArgumentError(absl::StrCat(
        "answer_extractor: \"", e.kind, "\" is not one of gsm8k, last_number, regex, exact"));
  }
  try {
    std::regex re(e.pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& error) {
    return absl::InvalidArgumentError(
        absl::StrCat("answer_extractor.pattern: ", error.what()));
  }
  return absl::OkStatus();
}

std::optional<std::string> ExtractAnswer(const AnswerExtractor& e, absl::string_view text) {
  // The reference cuts a completion at its first NUL.
  text = text.substr(0, text.find('\0'));
  const std::string s(text);
  std::smatch m;
  if (e.kind == "gsm8k") {
    static const std::regex kAnswer("#### (-?[0-9.,]+)");
    if (!std::regex_search(s, m, kAnswer)) return std::nullopt;
    return NumberText(std::string(absl::StripAsciiWhitespace(m[1].str())));
  }
  if (e.kind == "last_number") {
    static const std::regex kNumber("-?[0-9][0-9,]*(\\.[0-9]+)?");
    std::optional<std::string> last;
    for (auto it = std::sregex_iterator(s.begin(), s.end(), kNumber);
         it != std::sregex_iterator(); ++it) {
      last = NumberText(it->str());
    }
    return last;
  }
  if (e.kind == "regex") {
    const std::regex re(e.pattern, std::regex::ECMAScript);
    if (!std::regex_search(s, m, re)) return std::nullopt;
    return m.size() > 1 ? m[1].str() : m[0].str();
  }
  return std::string(absl::StripAsciiWhitespace(text));  // exact
}

bool SameAnswer(const AnswerExtractor& e, const std::string& a, const std::string& b) {
  if (e.kind == "gsm8k" || e.kind == "last_number") {
    double x = 0, y = 0;
    return absl::SimpleAtod(a, &x) && absl::SimpleAtod(b, &y) && x == y;
  }
  return a == b;
}

std::optional<double> EvalArithmetic(absl::string_view expression) {
  return Arithmetic(expression).Parse();
}

std::vector<std::string> Annotations(absl::string_view text) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = text.find("<<", at)) != absl::string_view::npos) {
    // As the regex <<([^>]*)>>: the shortest run without '>' closed by >>.
    const size_t start = at + 2;
    size_t end = start;
    while (end < text.size() && text[end] != '>') ++end;
    if (end + 1 < text.size() && text[end + 1] == '>') {
      out.emplace_back(text.substr(start, end - start));
      at = end + 2;
    } else {
      at = start - 1;
    }
  }
  return out;
}

bool AnnotationsHold(absl::string_view text) {
  for (const std::string& a : Annotations(text)) {
    const size_t eq = a.find('=');
    if (eq == std::string::npos) return false;
    // lhs = split('=')[0], rhs = split('=')[1], as the reference.
    const size_t next = a.find('=', eq + 1);
    const std::string rhs_text(absl::StripAsciiWhitespace(
        a.substr(eq + 1, next == std::string::npos ? std::string::npos : next - eq - 1)));
    const std::optional<double> lhs = EvalArithmetic(a.substr(0, eq));
    double rhs = 0;
    if (!lhs.has_value() || !absl::SimpleAtod(rhs_text, &rhs)) return false;
    if (!(std::abs(*lhs - rhs) < 1e-3)) return false;
  }
  return true;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::vector<std::string> SelectRftPaths(const AnswerExtractor& extractor,
                                        const std::string& gold_answer,
                                        const std::vector<std::string>& samples,
                                        RftDedupe dedupe) {
  std::vector<std::string> kept;
  std::vector<std::string> keys;  // parallel to kept
  for (const std::string& q : samples) {
    const std::optional<std::string> answer = ExtractAnswer(extractor, q);
    if (!answer.has_value() || !SameAnswer(extractor, *answer, gold_answer)) continue;
    if (dedupe == RftDedupe::kNone) {
      kept.push_back(q);
      continue;
    }
    if (dedupe == RftDedupe::kExact) {
      if (std::find(kept.begin(), kept.end(), q) == kept.end()) kept.push_back(q);
      continue;
    }
    if (!AnnotationsHold(q)) continue;
    const std::string key = absl::StrReplaceAll(absl::StrJoin(Annotations(q), "|"), {{" ", ""}});
    const auto same = std::find(keys.begin(), keys.end(), key);
    if (same == keys.end()) {
      kept.push_back(q);
      keys.push_back(key);
      continue;
    }
    // The farest of the two: summed distance to the kept paths other than
    // the one it would replace.
    const std::string& now = kept[same - keys.begin()];
    size_t now_score = 0, q_score = 0;
    for (const std::string& ref : kept) {
      if (ref == now) continue;
      now_score += EditDistance(now, ref);
      q_score += EditDistance(q, ref);
    }
    if (q_score > now_score) kept[same - keys.begin()] = q;
  }
  return kept;
}

}  // namespace lathe::engine
