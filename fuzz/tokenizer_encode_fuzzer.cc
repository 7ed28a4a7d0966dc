// Fuzzes Tokenizer::Encode and Decode (worker/engine/text/tokenizer.h) with
// arbitrary text on three small tokenizers in fuzz/tokenizers/ (see
// fuzz/README.md): byte-level with Digits (SmolLM2), byte-level with an ICU
// Split regex, NFC and stripping added tokens (Qwen2 style), and
// SentencePiece-style with byte fallback (TinyLlama). The first input byte
// picks the tokenizer; the rest is the text.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz/tokenizer_check.h"
#include "worker/engine/text/tokenizer.h"

namespace {

using lathe::engine::Tokenizer;

constexpr std::array<const char*, 3> kTokenizers = {"smollm2", "qwen2_style",
                                                    "tinyllama"};

const Tokenizer& Get(size_t index) {
  static const auto* const tokenizers = [] {
    auto* loaded = new std::array<std::unique_ptr<Tokenizer>, 3>();
    for (size_t i = 0; i < kTokenizers.size(); ++i) {
      auto t = Tokenizer::Load(std::string(LATHE_FUZZ_TOKENIZERS_DIR) + "/" +
                               kTokenizers[i]);
      if (!t.ok()) {
        std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
        std::abort();
      }
      (*loaded)[i] = *std::move(t);
    }
    return loaded;
  }();
  return *(*tokenizers)[index];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t index = data[0] % kTokenizers.size();
  const std::string_view text(reinterpret_cast<const char*>(data) + 1,
                              size - 1);
  lathe::fuzz::CheckEncodeDecode(Get(index), text,
                                 /*round_trips=*/index == 0);
  return 0;
}
