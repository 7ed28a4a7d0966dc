// Checks an uploaded training file line by line as its bytes stream in, so
// a file is refused at the door with an error naming the line and the field.
//
// Accepted, one JSON object per line, one format per file:
// - chat: {"messages": [...]}, roles system/user/assistant, string content,
//   at least one assistant message with non-empty content and weight 1,
//   optional per-message "weight" 0 or 1 (assistant messages only);
// - prompt_completion: {"prompt": "...", "completion": "..."} with a
//   non-empty completion;
// - text: {"text": "..."} with non-empty text.
// Blank lines are skipped. Not thread-safe.
#ifndef LATHE_SERVER_JSONL_VALIDATOR_H_
#define LATHE_SERVER_JSONL_VALIDATOR_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

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
  // "chat", "prompt_completion" or "text": the format of the first line.
  const std::string& format() const { return format_; }

  // Checks one line (1-based number for messages) and returns its format;
  // exposed for tests.
  static absl::StatusOr<std::string> CheckLine(absl::string_view line,
                                               int64_t line_number);

 private:
  absl::Status EndLine();

  Limits limits_;
  std::string line_;
  int64_t line_number_ = 0;
  int64_t examples_ = 0;
  int64_t format_line_ = 0;  // the line that set format_
  std::string format_;
  absl::Status error_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_JSONL_VALIDATOR_H_
