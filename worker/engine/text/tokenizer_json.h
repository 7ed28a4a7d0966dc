// A Hugging Face tokenizer.json with a BPE model, in either flavour:
// byte-level (GPT-2, Llama 3, Qwen2, SmolLM2) or SentencePiece-style
// (Metaspace or Prepend/Replace "▁", byte fallback; Llama 2, Mistral,
// TinyLlama). Torch-free.
//
// Encoding runs the stages of Hugging Face tokenizers on text that holds no
// added token (Tokenizer splits those out first): normalizer (pretokenize.h),
// pre-tokenizer, BPE (bpe.h). Decoding runs the "decoder" chain.
#ifndef LATHE_WORKER_ENGINE_TEXT_TOKENIZER_JSON_H_
#define LATHE_WORKER_ENGINE_TEXT_TOKENIZER_JSON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/text/bpe.h"
#include "worker/engine/text/pretokenize.h"

namespace lathe::engine {

// An entry of tokenizer.json's "added_tokens" (or tokenizer_config's
// "added_tokens_decoder"): matched verbatim in the input before the model
// sees it.
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool lstrip = false;       // also takes the whitespace on its left
  bool rstrip = false;       // also takes the whitespace on its right
  bool single_word = false;  // only when not inside a word
  bool special = false;
};

// Reads an added token's flags from `json` ({"content": ..., "lstrip": ...}).
AddedToken AddedTokenFromJson(const nlohmann::json& json, int32_t id);

// The ids Hugging Face's encode(text) (add_special_tokens=True) puts around
// the text's own tokens.
struct SpecialTokens {
  std::vector<int32_t> prefix;  // e.g. {1}: BOS
  std::vector<int32_t> suffix;  // e.g. {} or {2}: EOS
};

// Immutable after Load; thread-safe.
class TokenizerJson {
 public:
  // NOT_FOUND when `path` cannot be read; INVALID_ARGUMENT naming what is
  // not supported or malformed.
  static absl::StatusOr<std::unique_ptr<TokenizerJson>> Load(
      const std::string& path);

  // Appends the tokens of `text` (which holds no added token) to `ids`, and
  // their byte ranges, offset by `offset` (its position in the whole
  // input), to `ranges`.
  absl::Status EncodeSegment(
      std::string_view text, size_t offset, std::vector<int32_t>* ids,
      std::vector<std::pair<size_t, size_t>>* ranges) const;

  // The text of `tokens` (token strings, added tokens included) through the
  // decoder chain, with invalid UTF-8 replaced by U+FFFD.
  std::string Decode(const std::vector<std::string>& tokens) const;

  const std::vector<AddedToken>& added_tokens() const { return added_; }
  // What the "post_processor" adds around a single text: a
  // TemplateProcessing's "single" template, nothing for ByteLevel or none,
  // a Sequence of those combined. INVALID_ARGUMENT naming the file and the
  // type for another post-processor (which Load accepts: only encoding with
  // special tokens needs it).
  const absl::StatusOr<SpecialTokens>& post_processor() const {
    return post_processor_;
  }
  const BpeModel& model() const { return *model_; }

  struct DecodeStep;

 private:
  TokenizerJson() = default;

  // Load's work on the parsed document; throws nlohmann::json::exception
  // for a field of the wrong type.
  static absl::StatusOr<std::unique_ptr<TokenizerJson>> FromJson(
      const nlohmann::json& json, const std::string& path);

  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::vector<std::shared_ptr<const DecodeStep>> decoder_;
  std::vector<AddedToken> added_;
  absl::StatusOr<SpecialTokens> post_processor_ = SpecialTokens{};
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_TOKENIZER_JSON_H_
