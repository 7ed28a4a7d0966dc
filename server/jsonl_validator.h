// Checks an uploaded training file line by line as its bytes stream in, so
// a file is refused at the door with an error naming the line and the field.
//
// Each line is parsed by common/data_format.h (the engine's parser too), so
// a file that passes here is one the engine reads; one format per file.
// Blank lines (JSON whitespace only) are skipped. Memory is bounded by
// max_line_bytes: under four times the longest line, never a DOM.
// Not thread-safe.
#ifndef LATHE_SERVER_JSONL_VALIDATOR_H_
#define LATHE_SERVER_JSONL_VALIDATOR_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/data_format.h"

namespace lathe {

class JsonlValidator {
 public:
  struct Limits {
    int64_t max_line_bytes = 4 << 20;
    int64_t max_examples = 1'000'000;
  };
  JsonlValidator() : JsonlValidator(Limits()) {}
  explicit JsonlValidator(Limits limits) : limits_(limits) {}

  // Feeds the next bytes. INVALID_ARGUMENT naming the line and field on the
  // first bad line; RESOURCE_EXHAUSTED if a limit is exceeded. After an
  // error, further calls return the same error.
  absl::Status Feed(absl::string_view data);
  // Checks the last line and that the file held at least one example.
  absl::Status Finish();

  int64_t examples() const { return examples_; }
  // "chat", "prompt_completion" or "text": the format of the first line;
  // "" before any example.
  const char* format() const {
    return file_format_.empty() ? "" : DataFormatName(file_format_.format());
  }

 private:
  absl::Status EndLine();

  Limits limits_;
  std::string line_;
  int64_t line_number_ = 0;
  int64_t examples_ = 0;
  DataFileFormat file_format_;
  absl::Status error_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_JSONL_VALIDATOR_H_
