// Text -> token ids for a Hugging Face model folder with a SentencePiece
// `tokenizer.model` and a `tokenizer_config.json`. Torch-free.
//
// Added tokens (tokenizer_config's `added_tokens_decoder`, e.g. "</s>") are
// matched verbatim inside the text; the text between them is encoded by
// SentencePiece piece by piece, as Hugging Face tokenizers do. Their
// lstrip / rstrip / single_word flags are not honoured (the Llama-family
// special tokens leave them false).
#ifndef LATHE_WORKER_ENGINE_TOKENIZER_H_
#define LATHE_WORKER_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/sentencepiece_model.h"

namespace lathe::engine {

// Token ids and, per token, the byte range [begin, end) of the text it came
// from (begin == end for a token that covers no text, e.g. the "▁" prefix).
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::pair<size_t, size_t>> ranges;
};

// Immutable after Load; thread-safe.
class Tokenizer {
 public:
  // Loads `model_dir`/tokenizer.model and `model_dir`/tokenizer_config.json.
  // NOT_FOUND when either is missing (a folder with only tokenizer.json is
  // not supported yet), INVALID_ARGUMENT naming the field when the config is
  // malformed (e.g. eos_token missing or not in the vocabulary).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(
      const std::string& model_dir);

  // Encodes `text` without adding BOS/EOS. INTERNAL if SentencePiece fails.
  absl::StatusOr<Encoding> Encode(std::string_view text) const;

  // SentencePiece pieces plus any added token beyond them.
  int32_t vocab_size() const { return vocab_size_; }
  int32_t eos_id() const { return eos_id_; }
  // pad_token's id, or eos_id() when the config sets none.
  int32_t pad_id() const { return pad_id_; }
  const std::string& eos_token() const { return eos_token_; }
  // tokenizer_config's "chat_template" ("" when absent).
  const std::string& chat_template() const { return chat_template_; }

 private:
  Tokenizer() = default;
  // The added token that starts at text[pos] (longest first), or nullptr.
  const std::pair<std::string, int32_t>* AddedTokenAt(std::string_view text,
                                                      size_t pos) const;

  std::unique_ptr<SentencePieceModel> spm_;
  std::vector<std::pair<std::string, int32_t>> added_tokens_;  // longest first
  int32_t vocab_size_ = 0;
  int32_t eos_id_ = 0;
  int32_t pad_id_ = 0;
  std::string eos_token_;
  std::string chat_template_;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TOKENIZER_H_
