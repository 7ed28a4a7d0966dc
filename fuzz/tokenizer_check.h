// The properties both tokenizer fuzz targets hold a loaded Tokenizer to.
#ifndef LATHE_FUZZ_TOKENIZER_CHECK_H_
#define LATHE_FUZZ_TOKENIZER_CHECK_H_

#include <string>
#include <string_view>

#include "fuzz/fuzz_util.h"
#include "worker/engine/text/pretokenize.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::fuzz {

// Encodes `text`. When that succeeds, every id must be in the vocabulary,
// every byte range inside `text` and in order, and the ids must decode;
// with `round_trips` (a byte-level tokenizer without normalizer or
// stripping added tokens), valid UTF-8 must decode back to itself.
inline void CheckEncodeDecode(const engine::Tokenizer& tokenizer,
                              std::string_view text, bool round_trips) {
  const absl::StatusOr<engine::Encoding> encoding = tokenizer.Encode(text);
  if (!encoding.ok()) {
    FUZZ_CHECK(encoding.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  FUZZ_CHECK(encoding->ids.size() == encoding->ranges.size());
  size_t previous_begin = 0;
  for (size_t i = 0; i < encoding->ids.size(); ++i) {
    const auto [begin, end] = encoding->ranges[i];
    FUZZ_CHECK(encoding->ids[i] >= 0 &&
               encoding->ids[i] < tokenizer.vocab_size());
    FUZZ_CHECK(previous_begin <= begin && begin <= end && end <= text.size());
    previous_begin = begin;
  }
  const absl::StatusOr<std::string> decoded = tokenizer.Decode(encoding->ids);
  FUZZ_CHECK(decoded.ok());
  if (round_trips && engine::ToValidUtf8(text) == text) {
    FUZZ_CHECK(*decoded == text);
  }
}

}  // namespace lathe::fuzz

#endif  // LATHE_FUZZ_TOKENIZER_CHECK_H_
