// Checks an uploaded training file line by line as its bytes stream in, so
// a file is refused at the door with an error naming the line and the field.
//
// Accepted: OpenAI chat JSONL, one {"messages": [...]} object per line, roles
// system/user/assistant, string content, at least one assistant message with
// non-empty content, optional per-message "weight" 0 or 1. Blank lines are
// skipped. Not thread-safe.
#ifndef LATHE_SERVER_JSONL_VALIDATOR_H_
#define LATHE_SERVER_JSONL_VALIDATOR_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

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
  std::string format() const { return "chat"; }

  // Checks one line (1-based number for messages); exposed for tests.
  static absl::Status CheckLine(absl::string_view line, int64_t line_number);

 private:
  absl::Status EndLine();

  Limits limits_;
  std::string line_;
  int64_t line_number_ = 0;
  int64_t examples_ = 0;
  absl::Status error_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_JSONL_VALIDATOR_H_
