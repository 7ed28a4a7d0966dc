// Fuzzes JsonlValidator (server/jsonl_validator.h) with arbitrary bytes.
// Beyond not crashing: the verdict must not depend on how the upload is cut
// into Feed calls, and an error must stick, as the header promises.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "fuzz/fuzz_util.h"
#include "server/jsonl_validator.h"

namespace lathe {
namespace {

struct Verdict {
  absl::Status status;  // of Finish
  int64_t examples = 0;
  std::string format;
};

// Feeds `data` in chunks of chunk_size(i) bytes, then finishes.
template <typename ChunkSize>
Verdict Validate(absl::string_view data, JsonlValidator::Limits limits,
                 ChunkSize chunk_size) {
  JsonlValidator validator(limits);
  absl::Status fed;
  for (size_t pos = 0, i = 0; pos < data.size() && fed.ok(); ++i) {
    const size_t n = std::min(chunk_size(i), data.size() - pos);
    fed = validator.Feed(data.substr(pos, n));
    pos += n;
  }
  Verdict verdict{validator.Finish(), validator.examples(), validator.format()};
  if (!fed.ok()) {
    FUZZ_CHECK(verdict.status == fed);
    FUZZ_CHECK(validator.Feed("{\"text\": \"more\"}\n") == fed);
  }
  return verdict;
}

}  // namespace
}  // namespace lathe

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using lathe::JsonlValidator;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  // The default limits, and small ones that the fuzzer can reach.
  for (const JsonlValidator::Limits limits :
       {JsonlValidator::Limits(),
        JsonlValidator::Limits{.max_line_bytes = 48, .max_examples = 2}}) {
    const lathe::Verdict whole =
        lathe::Validate(input, limits, [&](size_t) { return input.size(); });
    // 1 to 17 bytes at a time, the cuts chosen by the input's own bytes.
    const lathe::Verdict pieces = lathe::Validate(input, limits, [&](size_t i) {
      return size_t{1} + static_cast<uint8_t>(input[i % input.size()]) % 17;
    });
    FUZZ_CHECK(whole.status == pieces.status);
    FUZZ_CHECK(whole.examples == pieces.examples);
    FUZZ_CHECK(whole.format == pieces.format);
  }
  return 0;
}
