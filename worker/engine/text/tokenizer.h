// Text <-> token ids for a Hugging Face model folder, giving the ids of
// Hugging Face's encode(text, add_special_tokens=False). Torch-free.
//
// The tokenizer is `tokenizer.json` when the folder has one (BPE, byte-level
// or SentencePiece-style, see tokenizer_json.h), else the SentencePiece
// `tokenizer.model`; `tokenizer_config.json` gives the special tokens, and
// the chat template unless the folder has `chat_template.jinja`, which takes
// precedence over the config's "chat_template" as in transformers.
//
// Added tokens are matched inside the raw text, leftmost then longest,
// honouring lstrip / rstrip / single_word; the text between them is encoded
// segment by segment, as Hugging Face does. They are tokenizer.json's
// "added_tokens"; for tokenizer.model, tokenizer_config's
// "added_tokens_decoder" plus its special tokens (bos/eos/unk/pad/sep/cls/
// mask_token and additional_special_tokens) that are SentencePiece pieces,
// as Hugging Face's slow tokenizer adds them all: SentencePiece alone would
// split "</s>" written in the text into "</", "s", ">". Added tokens flagged
// "normalized" are matched on the raw text too (the same text for the models
// this engine supports, whose added tokens are ASCII).
#ifndef LATHE_WORKER_ENGINE_TEXT_TOKENIZER_H_
#define LATHE_WORKER_ENGINE_TEXT_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/text/sentencepiece_model.h"
#include "worker/engine/text/tokenizer_json.h"

namespace lathe::engine {

// Token ids and, per token, the byte range [begin, end) of the text it came
// from (begin == end for a token that covers no text, e.g. the "▁" prefix).
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::pair<size_t, size_t>> ranges;
};

// Which file of the model folder to tokenize with.
enum class TokenizerFile {
  kAuto,           // tokenizer.json when present, else tokenizer.model
  kTokenizerJson,  // tokenizer.json
  kSentencePiece,  // tokenizer.model
};

// Immutable after Load; thread-safe.
class Tokenizer {
 public:
  // Loads the tokenizer of `model_dir` (see TokenizerFile) and
  // `model_dir`/tokenizer_config.json. NOT_FOUND when a needed file is
  // missing, INVALID_ARGUMENT naming the field when one is malformed or
  // unsupported (e.g. eos_token missing or not in the vocabulary).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(
      const std::string& model_dir, TokenizerFile file = TokenizerFile::kAuto);

  // Encodes `text` without adding BOS/EOS. INTERNAL if SentencePiece fails,
  // INVALID_ARGUMENT if a character has no token (a BPE without byte
  // fallback nor unk_token).
  absl::StatusOr<Encoding> Encode(std::string_view text) const;

  // Encode, with the special tokens Hugging Face's encode(text) adds by
  // default (add_special_tokens=True) around the text's tokens; their byte
  // ranges are empty, at the text's start / end. What is added:
  // tokenizer_config's add_bos_token / add_eos_token when it sets either
  // (defaults true / false, as LlamaTokenizer's), else tokenizer.json's
  // post_processor, else (tokenizer.model) BOS. Errors as Encode, and
  // INVALID_ARGUMENT for a post_processor this engine cannot read.
  absl::StatusOr<Encoding> EncodeWithSpecialTokens(std::string_view text) const;

  // The text of `ids`, special tokens included, as Hugging Face's
  // decode(ids) (invalid UTF-8 becomes U+FFFD). INVALID_ARGUMENT for an id
  // outside the vocabulary.
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const;

  // The id of a token (added or from the model), or -1.
  int32_t TokenToId(const std::string& token) const;

  // Model tokens plus any added token beyond them.
  int32_t vocab_size() const { return vocab_size_; }
  int32_t eos_id() const { return eos_id_; }
  // bos_token's id, or -1 when the config sets none.
  int32_t bos_id() const { return bos_id_; }
  // pad_token's id, or eos_id() when the config sets none.
  int32_t pad_id() const { return pad_id_; }
  const std::string& eos_token() const { return eos_token_; }
  // "" when the config sets none.
  const std::string& bos_token() const { return bos_token_; }
  // chat_template.jinja's text when the folder has one, else
  // tokenizer_config's "chat_template" ("" when neither).
  const std::string& chat_template() const { return chat_template_; }
  // True when the text came from tokenizer.json.
  bool from_tokenizer_json() const { return json_ != nullptr; }

 private:
  Tokenizer() = default;

  // Load's work; throws nlohmann::json::exception for a field of
  // tokenizer_config.json of the wrong type.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadMayThrow(
      const std::string& model_dir, TokenizerFile file);

  struct Match {
    const AddedToken* token = nullptr;
    size_t begin = 0;  // of the match, stripped whitespace included
    size_t end = 0;
  };
  // The next added token in text[from, ...), or a Match without token.
  Match NextAddedToken(std::string_view text, size_t from) const;
  absl::Status EncodeSegment(std::string_view text, size_t begin, size_t end,
                             Encoding* out) const;

  // Exactly one of spm_ and json_ is set.
  std::unique_ptr<SentencePieceModel> spm_;
  std::unique_ptr<TokenizerJson> json_;
  std::vector<AddedToken> added_tokens_;        // longest first
  std::array<bool, 256> starts_added_token_{};  // by first byte
  int32_t vocab_size_ = 0;
  int32_t eos_id_ = 0;
  int32_t bos_id_ = -1;
  int32_t pad_id_ = 0;
  absl::StatusOr<SpecialTokens> special_tokens_ = SpecialTokens{};
  std::string eos_token_;
  std::string bos_token_;
  std::string chat_template_;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_TOKENIZER_H_
