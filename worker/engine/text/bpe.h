// The BPE model of a Hugging Face tokenizer.json ("model": {"type": "BPE"}):
// vocabulary, ranked merges, byte fallback, unknown token, ignore_merges.
// Torch-free.
#ifndef LATHE_WORKER_ENGINE_TEXT_BPE_H_
#define LATHE_WORKER_ENGINE_TEXT_BPE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {

// One token of a pre-token: its id and the byte range [begin, end) of the
// pre-token it covers.
struct BpeToken {
  int32_t id = 0;
  size_t begin = 0;
  size_t end = 0;
};

// Token ids read from a tokenizer file are below this: 2^24, 64 times the
// largest vocabulary in use, so that a malformed file cannot ask for a
// huge id table.
inline constexpr int64_t kMaxTokenIds = int64_t{1} << 24;

// Immutable after FromJson; thread-safe.
class BpeModel {
 public:
  // `model` is tokenizer.json's "model". Merges may be "a b" strings or
  // ["a", "b"] pairs. INVALID_ARGUMENT for another model type, a
  // continuing_subword_prefix / end_of_word_suffix (not supported), an id
  // outside [0, kMaxTokenIds), or a merge whose parts or result are not in
  // the vocabulary. Throws nlohmann::json::exception for a field of the
  // wrong type (TokenizerJson::Load turns it into INVALID_ARGUMENT).
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(
      const nlohmann::json& model);

  // Appends the tokens of `word` to *out. With `byte_level`, each byte of
  // `word` is first mapped to its GPT-2 character; otherwise symbols are
  // UTF-8 characters, those outside the vocabulary becoming <0xXX> byte
  // tokens (byte_fallback) or the unknown token. INVALID_ARGUMENT when a
  // symbol has no token and the model has no unk_token.
  absl::Status Tokenize(std::string_view word, bool byte_level,
                        std::vector<BpeToken>* out) const;

  // -1 when `token` is not in the vocabulary.
  int32_t TokenToId(const std::string& token) const;
  // "" for an id outside the vocabulary.
  const std::string& IdToToken(int32_t id) const;
  // One past the largest id.
  int32_t vocab_size() const {
    return static_cast<int32_t>(id_to_token_.size());
  }

 private:
  BpeModel() = default;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  struct Merge {
    int32_t rank;
    int32_t id;  // of the merged token
  };
  // Keyed by (left id << 32) | right id.
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_BPE_H_
