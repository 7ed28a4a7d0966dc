// The JSONL line formats of training data, parsed in one place: the server's
// upload validator and the engine both read lines through ParseDataLine, so
// a line that passes upload is the line the engine trains on.
//
// A line is one JSON object in one of four formats:
// - chat: {"messages": [{"role": "system"|"user"|"assistant",
//   "content": "...", "weight": 0|1}, ...]}, at least one assistant
//   message with weight 1 (the default) and non-empty content; only
//   assistant messages take a weight;
// - prompt/completion: {"prompt": "...", "completion": "..."} with a
//   non-empty completion;
// - text: {"text": "..."} with non-empty text;
// - preference (OpenAI's DPO format): {"input": {"messages": [...]},
//   "preferred_output": [{"role": "assistant", "content": "..."}],
//   "non_preferred_output": [{"role": "assistant", "content": "..."}]}:
//   input.messages is the prompt (system, user and earlier assistant turns,
//   no weights, ending with a system or user message), each output exactly
//   one assistant message with non-empty content. "tools" and
//   "parallel_tool_calls" in input are skipped, as other unknown keys.
// The format is the one whose keys the line holds; a line holding keys of
// two formats (e.g. "messages" and "prompt") is ambiguous and refused, as is
// a key given twice. Other keys, at the top and in messages, are skipped
// and not kept. Whitespace is JSON's (space, tab, CR, LF): a line of only
// those is blank; any other byte outside the object (e.g. \f, \v) makes
// the line bad.
//
// The parse is a SAX pass (no DOM): memory is the line's own strings plus
// the parser's token buffers, whatever the nesting or width of skipped
// values (CheckDataLine keeps less still). Torch- and proto-free.
#ifndef LATHE_COMMON_DATA_FORMAT_H_
#define LATHE_COMMON_DATA_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe {

enum class DataFormat { kChat, kPromptCompletion, kText, kPreference };

// "chat", "prompt_completion", "text" or "preference" (File.format in the
// API).
const char* DataFormatName(DataFormat format);

enum class Role { kSystem, kUser, kAssistant };

// "system", "user" or "assistant".
const char* RoleName(Role role);

struct DataMessage {
  Role role = Role::kUser;
  std::string content;
  bool train = true;  // assistant messages only: false for "weight": 0
};

// One parsed line; the fields of its format are set, the others empty.
struct DataExample {
  DataFormat format = DataFormat::kChat;
  std::vector<DataMessage> messages;  // kChat; kPreference: input.messages
  std::vector<DataMessage> preferred;      // kPreference: one assistant
  std::vector<DataMessage> non_preferred;  // kPreference: one assistant
  std::string prompt;                 // kPromptCompletion
  std::string completion;             // kPromptCompletion
  std::string text;                   // kText
};

// True if `line` holds only JSON whitespace (space, tab, CR, LF) or nothing.
bool IsBlankDataLine(absl::string_view line);

// Parses one line (without its '\n'). INVALID_ARGUMENT whose message names
// the field first ("messages[1].role: unknown role \"bot\" ...",
// "completion: empty ...") or says what is wrong with the whole line ("not
// valid JSON ...", "ambiguous: ..."); callers prefix the line's place.
// REQUIRES: !IsBlankDataLine(line).
absl::StatusOr<DataExample> ParseDataLine(absl::string_view line);

// ParseDataLine's verdict without keeping the messages (for a validator
// that needs only the format: memory stays about the line's size however
// many messages it holds).
absl::StatusOr<DataFormat> CheckDataLine(absl::string_view line);

// The one-format-per-file rule, fed each example's format in order.
// Not thread-safe.
class DataFileFormat {
 public:
  // INVALID_ARGUMENT ("mixed formats: this line is text but line 1 is
  // chat (one format per file)") if `format` differs from the first line's.
  absl::Status Add(DataFormat format, int64_t line_number);

  // REQUIRES: Add returned OK at least once.
  DataFormat format() const { return format_; }
  bool empty() const { return first_line_ == 0; }

 private:
  DataFormat format_ = DataFormat::kChat;
  int64_t first_line_ = 0;  // the line that set format_; 0 before any
};

}  // namespace lathe

#endif  // LATHE_COMMON_DATA_FORMAT_H_
