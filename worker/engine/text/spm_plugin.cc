// liblathe_spm.so: the only code that includes sentencepiece's headers.
#include "worker/engine/text/spm_plugin.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <unordered_map>

#define LATHE_EXPORT __attribute__((visibility("default")))

namespace {

using Processor = sentencepiece::SentencePieceProcessor;

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& sentences)
      : sentences_(sentences) {}
  bool done() const override { return index_ >= sentences_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return sentences_[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& sentences_;
  size_t index_ = 0;
};

}  // namespace

extern "C" {

LATHE_EXPORT void* LatheSpmLoad(const std::string* path, std::string* error) {
  auto* processor = new Processor();
  const auto status = processor->Load(*path);
  if (!status.ok()) {
    *error = status.ToString();
    delete processor;
    return nullptr;
  }
  return processor;
}

LATHE_EXPORT void LatheSpmFree(void* processor) {
  delete static_cast<Processor*>(processor);
}

LATHE_EXPORT bool LatheSpmEncode(const void* processor, std::string_view text,
                                 std::vector<lathe::engine::SpmPiece>* pieces,
                                 std::string* error) {
  sentencepiece::ImmutableSentencePieceText spt;
  const auto status = static_cast<const Processor*>(processor)->Encode(
      text, spt.mutable_proto());
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  pieces->clear();
  pieces->reserve(spt.pieces_size());
  for (const auto& piece : spt.pieces()) {
    pieces->push_back(
        {static_cast<int32_t>(piece.id()), piece.begin(), piece.end()});
  }
  return true;
}

LATHE_EXPORT bool LatheSpmDecode(const void* processor,
                                 const std::vector<int>* ids, std::string* text,
                                 std::string* error) {
  const auto status =
      static_cast<const Processor*>(processor)->Decode(*ids, text);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

LATHE_EXPORT int32_t LatheSpmVocabSize(const void* processor) {
  return static_cast<const Processor*>(processor)->GetPieceSize();
}

LATHE_EXPORT int32_t LatheSpmPieceToId(const void* processor,
                                       const std::string* piece) {
  const auto* p = static_cast<const Processor*>(processor);
  const int id = p->PieceToId(*piece);
  // PieceToId answers unk_id for unknown pieces.
  return id == p->unk_id() && *piece != p->IdToPiece(id) ? -1 : id;
}

LATHE_EXPORT bool LatheSpmTrainBpe(const std::vector<std::string>* sentences,
                                   int vocab_size, std::string* model,
                                   std::string* error) {
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"split_digits", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "true"},
      {"hard_vocab_limit", "false"},
      {"num_threads", "1"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", "2"},
  };
  VectorIterator iterator(*sentences);
  const auto status =
      sentencepiece::SentencePieceTrainer::Train(args, &iterator, model);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

}  // extern "C"
