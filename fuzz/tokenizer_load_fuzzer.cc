// Fuzzes the tokenizer.json loader (Tokenizer::Load over
// worker/engine/text/tokenizer_json.h, pretokenize.h and bpe.h) with arbitrary
// documents. A document it accepts must then encode and decode a few fixed
// texts as tokenizer_check.h requires, and decode its first ids.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "fuzz/tokenizer_check.h"
#include "nlohmann/json.hpp"
#include "worker/engine/text/tokenizer.h"

namespace {

constexpr std::string_view kTexts[] = {
    "Hello, world! It's 2024: 12345 apples.",
    "  leading spaces\tand\r\nnew lines\n\n",
    "caf\xC3\xA9 na\xC3\xAFve \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80",
    "<s>[INST] hi [/INST]</s><|im_start|>user<|im_end|>",
    "bad \xFF\xC3 utf-8 \xED\xA0\x80",
};

// The eos_token to give Tokenizer::Load, which refuses a tokenizer without
// one: the first added token, else the first token of the vocabulary.
std::string EosOf(std::string_view document) {
  const nlohmann::json doc = nlohmann::json::parse(document, /*cb=*/nullptr,
                                                   /*allow_exceptions=*/false);
  if (!doc.is_object()) return "";
  const auto added = doc.find("added_tokens");
  if (added != doc.end() && added->is_array() && !added->empty() &&
      added->front().is_object()) {
    const auto content = added->front().find("content");
    if (content != added->front().end() && content->is_string()) {
      return content->get<std::string>();
    }
  }
  const auto model = doc.find("model");
  if (model == doc.end() || !model->is_object()) return "";
  const auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object() || vocab->empty()) {
    return "";
  }
  return vocab->begin().key();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view document(reinterpret_cast<const char*>(data), size);
  const std::string& dir = lathe::fuzz::ScratchDir();
  lathe::fuzz::WriteFileOrDie(dir + "/tokenizer.json", document);
  lathe::fuzz::WriteFileOrDie(
      dir + "/tokenizer_config.json",
      nlohmann::json{{"eos_token", EosOf(document)}}.dump(
          -1, ' ', false, nlohmann::json::error_handler_t::replace));
  const absl::StatusOr<std::unique_ptr<lathe::engine::Tokenizer>> tokenizer =
      lathe::engine::Tokenizer::Load(
          dir, lathe::engine::TokenizerFile::kTokenizerJson);
  if (!tokenizer.ok()) {
    FUZZ_CHECK(tokenizer.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  for (std::string_view text : kTexts) {
    lathe::fuzz::CheckEncodeDecode(**tokenizer, text, /*round_trips=*/false);
  }
  std::vector<int32_t> ids(std::min((*tokenizer)->vocab_size(), 512));
  std::iota(ids.begin(), ids.end(), 0);
  FUZZ_CHECK((*tokenizer)->Decode(ids).ok());
  return 0;
}
