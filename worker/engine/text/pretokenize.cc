#include "worker/engine/text/pretokenize.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "unicode/normalizer2.h"
#include "unicode/regex.h"
#include "unicode/uchar.h"
#include "unicode/unistr.h"
#include "unicode/utext.h"
#include "unicode/utf8.h"

namespace lathe::engine {

using Json = nlohmann::json;

AlignedText AlignedText::Of(std::string_view text, size_t offset) {
  AlignedText out;
  out.text = std::string(text);
  out.source.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    out.source.emplace_back(offset + i, offset + i + 1);
  }
  return out;
}

AlignedText AlignedText::Slice(size_t begin, size_t end) const {
  AlignedText out;
  out.text = text.substr(begin, end - begin);
  out.source.assign(source.begin() + begin, source.begin() + end);
  return out;
}

void AlignedText::Prepend(const std::string& s) {
  const size_t at = source.empty() ? 0 : source.front().first;
  text.insert(0, s);
  source.insert(source.begin(), s.size(), {at, at});
}

namespace {

// Calls f(begin, end, code_point) for each character of valid UTF-8 `s`.
template <typename F>
void ForEachChar(const std::string& s, F f) {
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(s.size());
  while (i < n) {
    const int32_t begin = i;
    UChar32 c;
    U8_NEXT(s.data(), i, n, c);
    f(static_cast<size_t>(begin), static_cast<size_t>(i), c);
  }
}

// Replaces text[begin, end) of `t` with `with`, every new byte aligned to
// the union of the replaced bytes' sources.
void AppendReplaced(const AlignedText& t, size_t begin, size_t end,
                    const std::string& with, AlignedText* out) {
  std::pair<size_t, size_t> range = t.source[begin];
  for (size_t i = begin; i < end; ++i) {
    range.first = std::min(range.first, t.source[i].first);
    range.second = std::max(range.second, t.source[i].second);
  }
  out->text += with;
  out->source.insert(out->source.end(), with.size(), range);
}

// Byte ranges of the matches of `pattern` in `text` (empty matches left out).
std::vector<std::pair<size_t, size_t>> RegexMatches(
    const icu::RegexPattern& pattern, const std::string& text) {
  std::vector<std::pair<size_t, size_t>> out;
  UErrorCode status = U_ZERO_ERROR;
  UText* utext = utext_openUTF8(nullptr, text.data(),
                                static_cast<int64_t>(text.size()), &status);
  std::unique_ptr<icu::RegexMatcher> matcher(pattern.matcher(status));
  if (U_FAILURE(status)) {
    utext_close(utext);
    return out;
  }
  // On a UTF-8 UText, ICU's native indexes are byte offsets.
  matcher->reset(utext);
  while (matcher->find(status) && U_SUCCESS(status)) {
    const int64_t begin = matcher->start64(status);
    const int64_t end = matcher->end64(status);
    if (end > begin) out.emplace_back(begin, end);
  }
  utext_close(utext);
  return out;
}

enum class Behavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous
};

// Splits `t` around `matches` (sorted, disjoint) as Hugging Face's
// NormalizedString::split does, appending the non-empty pieces to `out`.
void SplitAround(const AlignedText& t,
                 std::vector<std::pair<size_t, size_t>> matches,
                 Behavior behavior, bool invert,
                 std::vector<AlignedText>* out) {
  // Every byte of t, as (range, is_match) runs.
  std::vector<std::tuple<size_t, size_t, bool>> runs;
  size_t pos = 0;
  for (const auto& [b, e] : matches) {
    if (b > pos) runs.emplace_back(pos, b, invert);
    runs.emplace_back(b, e, !invert);
    pos = e;
  }
  if (pos < t.text.size()) runs.emplace_back(pos, t.text.size(), invert);
  if (behavior == Behavior::kContiguous) {
    std::vector<std::tuple<size_t, size_t, bool>> merged;
    for (const auto& run : runs) {
      if (!merged.empty() && std::get<2>(merged.back()) && std::get<2>(run)) {
        std::get<1>(merged.back()) = std::get<1>(run);
      } else {
        merged.push_back(run);
      }
    }
    runs = std::move(merged);
    behavior = Behavior::kIsolated;
  }
  std::vector<std::pair<size_t, size_t>> pieces;
  bool glue_next = false;
  for (const auto& [b, e, is_match] : runs) {
    if (is_match && behavior == Behavior::kRemoved) continue;
    if (is_match && behavior == Behavior::kMergedWithPrevious &&
        !pieces.empty()) {
      pieces.back().second = e;
      continue;
    }
    if (glue_next) {
      pieces.back().second = e;
      glue_next = false;
    } else {
      pieces.emplace_back(b, e);
    }
    if (is_match && behavior == Behavior::kMergedWithNext) glue_next = true;
  }
  for (const auto& [b, e] : pieces) {
    if (e > b) out->push_back(t.Slice(b, e));
  }
}

bool IsNumeric(UChar32 c) {
  const int8_t type = u_charType(c);
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER ||
         type == U_OTHER_NUMBER;
}

constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

absl::StatusOr<std::shared_ptr<const icu::RegexPattern>> Compile(
    const std::string& pattern, bool literal) {
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error;
  std::shared_ptr<const icu::RegexPattern> out(icu::RegexPattern::compile(
      icu::UnicodeString::fromUTF8(pattern), literal ? UREGEX_LITERAL : 0,
      parse_error, status));
  if (U_FAILURE(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ICU cannot compile the pattern \"",
                     pattern, "\": ", u_errorName(status)));
  }
  return out;
}

// The pattern of a Split / Replace step: {"Regex": ...} or {"String": ...}.
absl::StatusOr<std::shared_ptr<const icu::RegexPattern>> PatternOf(
    const Json& step) {
  const Json pattern = step.value("pattern", Json::object());
  if (pattern.contains("Regex")) {
    return Compile(pattern["Regex"].get<std::string>(), false);
  }
  if (pattern.contains("String")) {
    return Compile(pattern["String"].get<std::string>(), true);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "tokenizer.json: a ", step.value("type", ""), " step has no pattern"));
}

std::string TypeOf(const Json& json) {
  return json.is_object() ? json.value("type", "") : "";
}

}  // namespace

// ---------------------------------------------------------------------------
// Normalizer

struct Normalizer::Step {
  enum Kind { kUnicode, kPrepend, kReplace } kind;
  const icu::Normalizer2* unicode = nullptr;
  std::string text;                                  // kPrepend, kReplace
  std::shared_ptr<const icu::RegexPattern> pattern;  // kReplace
};

absl::StatusOr<Normalizer> Normalizer::FromJson(const Json& json) {
  Normalizer out;
  if (json.is_null()) return out;
  const std::string type = TypeOf(json);
  if (type == "Sequence") {
    for (const Json& child : json.value("normalizers", Json::array())) {
      absl::StatusOr<Normalizer> n = FromJson(child);
      if (!n.ok()) return n.status();
      out.steps_.insert(out.steps_.end(), n->steps_.begin(), n->steps_.end());
    }
    return out;
  }
  auto step = std::make_shared<Step>();
  UErrorCode status = U_ZERO_ERROR;
  if (type == "NFC") {
    step->kind = Step::kUnicode;
    step->unicode = icu::Normalizer2::getNFCInstance(status);
  } else if (type == "NFD") {
    step->kind = Step::kUnicode;
    step->unicode = icu::Normalizer2::getNFDInstance(status);
  } else if (type == "NFKC") {
    step->kind = Step::kUnicode;
    step->unicode = icu::Normalizer2::getNFKCInstance(status);
  } else if (type == "NFKD") {
    step->kind = Step::kUnicode;
    step->unicode = icu::Normalizer2::getNFKDInstance(status);
  } else if (type == "Prepend") {
    step->kind = Step::kPrepend;
    step->text = json.value("prepend", "");
  } else if (type == "Replace") {
    step->kind = Step::kReplace;
    step->text = json.value("content", "");
    absl::StatusOr<std::shared_ptr<const icu::RegexPattern>> pattern =
        PatternOf(json);
    if (!pattern.ok()) return pattern.status();
    step->pattern = *pattern;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.json: normalizer type \"", type, "\" is not supported"));
  }
  if (U_FAILURE(status)) {
    return absl::InternalError(
        absl::StrCat("ICU normalizer: ", u_errorName(status)));
  }
  out.steps_.push_back(std::move(step));
  return out;
}

AlignedText Normalizer::Apply(AlignedText t) const {
  for (const auto& step : steps_) {
    if (t.text.empty()) break;
    if (step->kind == Step::kPrepend) {
      t.Prepend(step->text);
    } else if (step->kind == Step::kReplace) {
      AlignedText out;
      size_t pos = 0;
      for (const auto& [b, e] : RegexMatches(*step->pattern, t.text)) {
        out.text += t.text.substr(pos, b - pos);
        out.source.insert(out.source.end(), t.source.begin() + pos,
                          t.source.begin() + b);
        AppendReplaced(t, b, e, step->text, &out);
        pos = e;
      }
      out.text += t.text.substr(pos);
      out.source.insert(out.source.end(), t.source.begin() + pos,
                        t.source.end());
      t = std::move(out);
    } else {
      // Normalize chunk by chunk between normalization boundaries, so each
      // output byte can be aligned to the chunk it came from.
      AlignedText out;
      size_t chunk = 0;
      auto flush = [&](size_t end) {
        if (end == chunk) return;
        UErrorCode status = U_ZERO_ERROR;
        icu::UnicodeString normalized = step->unicode->normalize(
            icu::UnicodeString::fromUTF8(t.text.substr(chunk, end - chunk)),
            status);
        std::string utf8;
        normalized.toUTF8String(utf8);
        AppendReplaced(t, chunk, end, utf8, &out);
        chunk = end;
      };
      ForEachChar(t.text, [&](size_t b, size_t, UChar32 c) {
        if (b > chunk && step->unicode->hasBoundaryBefore(c)) flush(b);
      });
      flush(t.text.size());
      t = std::move(out);
    }
  }
  return t;
}

// ---------------------------------------------------------------------------
// PreTokenizer

struct PreTokenizer::Step {
  enum Kind { kSplit, kByteLevel, kDigits, kMetaspace } kind;
  std::shared_ptr<const icu::RegexPattern> pattern;  // kSplit, kByteLevel
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;   // kByteLevel
  bool individual_digits = false;  // kDigits
  std::string replacement;         // kMetaspace
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;
};

absl::StatusOr<PreTokenizer> PreTokenizer::FromJson(const Json& json) {
  PreTokenizer out;
  if (json.is_null()) return out;
  const std::string type = TypeOf(json);
  if (type == "Sequence") {
    for (const Json& child : json.value("pretokenizers", Json::array())) {
      absl::StatusOr<PreTokenizer> p = FromJson(child);
      if (!p.ok()) return p.status();
      out.steps_.insert(out.steps_.end(), p->steps_.begin(), p->steps_.end());
      out.byte_level_ |= p->byte_level_;
    }
    return out;
  }
  auto step = std::make_shared<Step>();
  if (type == "Split") {
    step->kind = Step::kSplit;
    absl::StatusOr<std::shared_ptr<const icu::RegexPattern>> pattern =
        PatternOf(json);
    if (!pattern.ok()) return pattern.status();
    step->pattern = *pattern;
    step->invert = json.value("invert", false);
    const std::string behavior = json.value("behavior", "Isolated");
    if (behavior == "Removed") {
      step->behavior = Behavior::kRemoved;
    } else if (behavior == "Isolated") {
      step->behavior = Behavior::kIsolated;
    } else if (behavior == "MergedWithPrevious") {
      step->behavior = Behavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      step->behavior = Behavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      step->behavior = Behavior::kContiguous;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.json: Split behavior \"", behavior, "\" is unknown"));
    }
  } else if (type == "ByteLevel") {
    step->kind = Step::kByteLevel;
    step->add_prefix_space = json.value("add_prefix_space", false);
    if (json.value("use_regex", true)) {
      absl::StatusOr<std::shared_ptr<const icu::RegexPattern>> pattern =
          Compile(kGpt2Pattern, false);
      if (!pattern.ok()) return pattern.status();
      step->pattern = *pattern;
    }
    out.byte_level_ = true;
  } else if (type == "Digits") {
    step->kind = Step::kDigits;
    step->individual_digits = json.value("individual_digits", false);
  } else if (type == "Metaspace") {
    step->kind = Step::kMetaspace;
    step->replacement = json.value("replacement", "\xE2\x96\x81");
    step->split = json.value("split", true);
    if (json.contains("prepend_scheme")) {
      const std::string scheme = json["prepend_scheme"].get<std::string>();
      step->prepend = scheme == "first"   ? Step::kFirst
                      : scheme == "never" ? Step::kNever
                                          : Step::kAlways;
    } else {
      step->prepend =
          json.value("add_prefix_space", true) ? Step::kAlways : Step::kNever;
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.json: pre_tokenizer type \"", type, "\" is not supported"));
  }
  out.steps_.push_back(std::move(step));
  return out;
}

std::vector<AlignedText> PreTokenizer::Apply(AlignedText text,
                                             bool at_input_start) const {
  std::vector<AlignedText> pieces;
  if (!text.text.empty()) pieces.push_back(std::move(text));
  for (const auto& step : steps_) {
    std::vector<AlignedText> next;
    for (AlignedText& piece : pieces) {
      switch (step->kind) {
        case Step::kSplit:
          SplitAround(piece, RegexMatches(*step->pattern, piece.text),
                      step->behavior, step->invert, &next);
          break;
        case Step::kByteLevel:
          if (step->add_prefix_space && piece.text[0] != ' ') {
            piece.Prepend(" ");
          }
          if (step->pattern == nullptr) {
            next.push_back(std::move(piece));
          } else {
            SplitAround(piece, RegexMatches(*step->pattern, piece.text),
                        Behavior::kIsolated, false, &next);
          }
          break;
        case Step::kDigits: {
          std::vector<std::pair<size_t, size_t>> digits;
          ForEachChar(piece.text, [&](size_t b, size_t e, UChar32 c) {
            if (IsNumeric(c)) digits.emplace_back(b, e);
          });
          SplitAround(piece, std::move(digits),
                      step->individual_digits ? Behavior::kIsolated
                                              : Behavior::kContiguous,
                      false, &next);
          break;
        }
        case Step::kMetaspace: {
          AlignedText replaced;
          for (size_t i = 0; i < piece.text.size(); ++i) {
            if (piece.text[i] == ' ') {
              AppendReplaced(piece, i, i + 1, step->replacement, &replaced);
            } else {
              replaced.text += piece.text[i];
              replaced.source.push_back(piece.source[i]);
            }
          }
          const bool starts_replaced =
              replaced.text.compare(0, step->replacement.size(),
                                    step->replacement) == 0;
          if (!starts_replaced &&
              (step->prepend == Step::kAlways ||
               (step->prepend == Step::kFirst && at_input_start &&
                &piece == &pieces.front()))) {
            replaced.Prepend(step->replacement);
          }
          if (!step->split) {
            next.push_back(std::move(replaced));
            break;
          }
          std::vector<std::pair<size_t, size_t>> marks;
          for (size_t at = replaced.text.find(step->replacement);
               at != std::string::npos;
               at = replaced.text.find(step->replacement, at + 1)) {
            marks.emplace_back(at, at + step->replacement.size());
          }
          SplitAround(replaced, std::move(marks), Behavior::kMergedWithNext,
                      false, &next);
          break;
        }
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

// ---------------------------------------------------------------------------
// Byte-level characters and UTF-8 repair

namespace {

struct ByteLevelTables {
  std::array<std::string, 256> chars;
  std::array<char32_t, 256> code_points;
  ByteLevelTables() {
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      code_points[b] = printable ? b : next++;
      icu::UnicodeString(static_cast<UChar32>(code_points[b]))
          .toUTF8String(chars[b]);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

const std::string& ByteLevelChar(unsigned char byte) {
  return Tables().chars[byte];
}

int ByteLevelByte(char32_t c) {
  if (c < 0x100) {
    return Tables().code_points[c] == c ? static_cast<int>(c) : -1;
  }
  for (int b = 0; b < 256; ++b) {
    if (Tables().code_points[b] == c) return b;
  }
  return -1;
}

std::string ToValidUtf8(std::string_view bytes) {
  std::string out;
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(bytes.size());
  while (i < n) {
    const int32_t begin = i;
    UChar32 c;
    U8_NEXT(bytes.data(), i, n, c);
    if (c < 0) {
      out += "\xEF\xBF\xBD";
    } else {
      out.append(bytes.data() + begin, i - begin);
    }
  }
  return out;
}

}  // namespace lathe::engine
