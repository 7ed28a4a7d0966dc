// The C entry points of liblathe_spm.so, the plugin that holds
// libsentencepiece (see sentencepiece_model.h for why it is a plugin).
// Both sides share the process's libstdc++, so std types cross safely.
#ifndef LATHE_WORKER_ENGINE_TEXT_SPM_PLUGIN_H_
#define LATHE_WORKER_ENGINE_TEXT_SPM_PLUGIN_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/text/sentencepiece_model.h"

extern "C" {

// A loaded processor, or nullptr with *error set.
void* LatheSpmLoad(const std::string* path, std::string* error);
void LatheSpmFree(void* processor);
bool LatheSpmEncode(const void* processor, std::string_view text,
                    std::vector<lathe::engine::SpmPiece>* pieces,
                    std::string* error);
// The text of `ids` (SentencePiece's DecodeIds); false with *error set.
bool LatheSpmDecode(const void* processor, const std::vector<int>* ids,
                    std::string* text, std::string* error);
int32_t LatheSpmVocabSize(const void* processor);
// -1 when `piece` is not in the vocabulary.
int32_t LatheSpmPieceToId(const void* processor, const std::string* piece);
// The serialized model, or "" with *error set.
bool LatheSpmTrainBpe(const std::vector<std::string>* sentences, int vocab_size,
                      std::string* model, std::string* error);

}  // extern "C"

#endif  // LATHE_WORKER_ENGINE_TEXT_SPM_PLUGIN_H_
