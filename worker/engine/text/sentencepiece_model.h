// A thin wrapper over libsentencepiece, which lives in a plugin,
// liblathe_spm.so, opened with RTLD_LOCAL | RTLD_DEEPBIND. Two reasons:
// Debian's libsentencepiece embeds and exports protobuf-lite 3.14, which
// clashes with the libprotobuf 3.21 that LibTorch loads (each would call the
// other's internals and crash); and sentencepiece's headers declare their own
// `absl::string_view`, which clashes with Abseil's.
//
// The plugin is looked for in $LATHE_SPM_PLUGIN, then beside the running
// executable, then at its build-tree path.
#ifndef LATHE_WORKER_ENGINE_TEXT_SENTENCEPIECE_MODEL_H_
#define LATHE_WORKER_ENGINE_TEXT_SENTENCEPIECE_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lathe::engine {

// One token of an encoding: its id and the byte range [begin, end) of the
// input it covers (empty for the dummy-prefix "▁" the model inserts).
struct SpmPiece {
  int32_t id = 0;
  size_t begin = 0;
  size_t end = 0;
};

// A loaded SentencePiece model. Thread-safe for concurrent Encode calls.
class SentencePieceModel {
 public:
  // Loads a serialized model (tokenizer.model). On failure returns nullptr
  // and sets *error.
  static std::unique_ptr<SentencePieceModel> Load(const std::string& path,
                                                  std::string* error);
  ~SentencePieceModel();

  // Encodes `text`; on failure returns false and sets *error.
  bool Encode(std::string_view text, std::vector<SpmPiece>* pieces,
              std::string* error) const;
  // The text of `ids`; on failure returns false and sets *error.
  bool Decode(const std::vector<int>& ids, std::string* text,
              std::string* error) const;
  int32_t vocab_size() const;
  // The id of `piece`, or -1 when it is not in the vocabulary.
  int32_t PieceToId(const std::string& piece) const;

 private:
  explicit SentencePieceModel(void* processor) : processor_(processor) {}
  void* const processor_;  // owned, freed through the plugin
};

// Trains a byte-fallback BPE model on `sentences` single-threaded (so the
// result is deterministic) with <unk>=0, <s>=1, </s>=2, identity
// normalization and whitespace kept as is, like Llama's tokenizer. Returns
// the serialized model, or "" and sets *error.
std::string TrainSentencePieceBpe(const std::vector<std::string>& sentences,
                                  int vocab_size, std::string* error);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_SENTENCEPIECE_MODEL_H_
