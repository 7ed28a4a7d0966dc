// The normalizer and pre-tokenizer stages of a Hugging Face tokenizer.json,
// on ICU (regular expressions with \p{L}, \p{N} and look-ahead, Unicode
// normalization). Torch-free.
//
// Supported normalizers: NFC, NFD, NFKC, NFKD, Prepend, Replace (string
// pattern), Sequence. Supported pre-tokenizers: ByteLevel, Split (regex or
// string pattern, every behaviour but "Contiguous"), Digits, Metaspace,
// Sequence. Anything else is refused at load time, naming its type.
#ifndef LATHE_WORKER_ENGINE_TEXT_PRETOKENIZE_H_
#define LATHE_WORKER_ENGINE_TEXT_PRETOKENIZE_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {

// Text being tokenized, with, for each of its bytes, the byte range
// [begin, end) of the original input it came from (an empty range for
// inserted text such as a prepended "▁").
struct AlignedText {
  std::string text;
  std::vector<std::pair<size_t, size_t>> source;  // one per byte of text

  // `text` as it stands in the input at byte `offset`.
  static AlignedText Of(std::string_view text, size_t offset);
  AlignedText Slice(size_t begin, size_t end) const;
  // Inserts `s` at the front, aligned to the empty range at the first byte.
  void Prepend(const std::string& s);
};

// Immutable after FromJson; thread-safe.
class Normalizer {
 public:
  // `json` is tokenizer.json's "normalizer" (null: the identity).
  // INVALID_ARGUMENT naming an unsupported type. Throws
  // nlohmann::json::exception for a field of the wrong type.
  static absl::StatusOr<Normalizer> FromJson(const nlohmann::json& json);

  // REQUIRES: text.source covers each byte of text.text.
  AlignedText Apply(AlignedText text) const;

  struct Step;

 private:
  std::vector<std::shared_ptr<const Step>> steps_;
};

// Immutable after FromJson; thread-safe.
class PreTokenizer {
 public:
  // `json` is tokenizer.json's "pre_tokenizer" (null: the whole text is one
  // pre-token). INVALID_ARGUMENT naming an unsupported type or a pattern
  // ICU cannot compile. Throws nlohmann::json::exception for a field of the
  // wrong type.
  static absl::StatusOr<PreTokenizer> FromJson(const nlohmann::json& json);

  // Splits one normalized segment into pre-tokens (none empty).
  // `at_input_start` is true when the segment starts the whole input (for
  // Metaspace's prepend_scheme "first").
  std::vector<AlignedText> Apply(AlignedText text, bool at_input_start) const;

  // True when a ByteLevel step is present: the model then sees each byte
  // mapped to its GPT-2 character (see ByteLevelChar).
  bool byte_level() const { return byte_level_; }

  struct Step;

 private:
  std::vector<std::shared_ptr<const Step>> steps_;
  bool byte_level_ = false;
};

// GPT-2's byte -> printable character map (as UTF-8), and its inverse
// (-1 for a character that is not in the map).
const std::string& ByteLevelChar(unsigned char byte);
int ByteLevelByte(char32_t c);

// `bytes` with each invalid UTF-8 sequence replaced by U+FFFD, as Rust's
// String::from_utf8_lossy does.
std::string ToValidUtf8(std::string_view bytes);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_PRETOKENIZE_H_
