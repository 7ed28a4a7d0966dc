// Training data: JSONL -> tokenized examples with a loss mask. Torch-free.
//
// Four line formats, one per file (a file mixing them is refused), parsed
// by common/data_format.h, the upload validator's parser, so the engine
// reads exactly the lines lathed accepted; the first three are supervised
// data (below), the fourth, preference pairs, is read by
// data/preference_data.h:
//   chat               {"messages": [{"role": ..., "content": ...,
//                       "weight": 0|1}]}: rendered by the chat template;
//                       loss on each assistant message's content and its
//                       end-of-turn token (not on "weight": 0 ones)
//   prompt/completion  {"prompt": ..., "completion": ...}: the two texts
//                       concatenated, then EOS; loss on the completion's
//                       tokens and the EOS
//   text               {"text": ...}: the text, then EOS; loss on all of it
//   preference         {"input": {"messages": [...]}, "preferred_output":
//                       [...], "non_preferred_output": [...]}
#ifndef LATHE_WORKER_ENGINE_DATA_CHAT_DATA_H_
#define LATHE_WORKER_ENGINE_DATA_CHAT_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data_format.h"
#include "worker/engine/text/chat_template.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

// The chat template for `tokenizer`'s model: the family `name`
// ("zephyr", "llama3", "chatml", "mistral") when not empty, else the one
// recognized in tokenizer_config.json's chat_template; with the model's
// BOS/EOS tokens. Errors as ChatTemplate::Named / ChatTemplate::Detect.
absl::StatusOr<ChatTemplate> ChatTemplateFor(const Tokenizer& tokenizer,
                                             const std::string& name);

// The tokens that end a generated reply: EOS, and the template's end of
// turn (Llama 3's <|eot_id|>, ChatML's <|im_end|>) when `chat_template` is
// given and that is another token.
std::vector<int32_t> ReplyStopIds(const Tokenizer& tokenizer,
                                  const ChatTemplate* chat_template);

// One line of a data file.
struct DataRecord {
  DataFormat format = DataFormat::kChat;
  std::vector<ChatMessage> messages;  // kChat; kPreference: the prompt
  std::vector<ChatMessage> preferred;      // kPreference: one assistant
  std::vector<ChatMessage> non_preferred;  // kPreference: one assistant
  std::string prompt;                 // kPromptCompletion
  std::string completion;             // kPromptCompletion
  std::string text;                   // kText
  int line = 0;                       // 1-based line in the file
};

// Reads a data file (blank lines skipped). INVALID_ARGUMENT naming the file
// and line ("<name>: line 3: messages[1].role: ...") for a line that
// ParseDataLine refuses or of another format than the file's first line;
// NOT_FOUND if unreadable. `name` is what errors call the file ("" = its
// path): a job's file id, where the path is the worker's. `texts`, when
// not null, receives each record's line verbatim (without its newline).
absl::StatusOr<std::vector<DataRecord>> ReadDataJsonl(
    const std::string& path, const std::string& name = "",
    std::vector<std::string>* texts = nullptr);

struct Conversation {
  std::vector<ChatMessage> messages;
  int line = 0;  // 1-based line in the file
};

// ReadDataJsonl for a file of chat lines only; INVALID_ARGUMENT naming the
// line for any other format.
absl::StatusOr<std::vector<Conversation>> ReadChatJsonl(
    const std::string& path);

// A rendered conversation as tokens. message[i] is the index of the message
// whose trainable range token i overlaps, or -1.
struct TokenizedChat {
  std::string text;  // the rendered conversation
  std::vector<int32_t> ids;
  std::vector<int> message;
};

absl::StatusOr<TokenizedChat> TokenizeChat(
    const Tokenizer& tokenizer, const ChatTemplate& chat_template,
    const std::vector<ChatMessage>& messages);

// One training sequence: loss_mask[i] == 1 when ids[i] is a target (its
// logits come from position i - 1).
struct Example {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;
};

// A record as a whole example (before truncation): the mask follows the
// format's rule above; position 0 is never a target. `chat_template` may be
// null for records that are not chat (INVALID_ARGUMENT for one that is).
absl::StatusOr<Example> TokenizeRecord(const Tokenizer& tokenizer,
                                       const ChatTemplate* chat_template,
                                       const DataRecord& record);

struct Dataset {
  std::vector<Example> examples;
  int64_t truncated = 0;  // examples cut to max_seq_len
};

// Reads, renders, tokenizes and truncates a data file of any of the three
// supervised formats (logging how many examples were truncated); a
// preference line is refused, naming it and the methods that take it. `chat_template` is
// used for chat lines only, so a model without a known template can still
// train on prompt/completion or text data. INVALID_ARGUMENT as
// ReadDataJsonl, naming the first chat line when `chat_template` is an
// error (with that error), or naming the line of an example left with no
// target after truncation; `name` as for ReadDataJsonl.
absl::StatusOr<Dataset> LoadChatDataset(
    const std::string& path, const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, int max_seq_len,
    const std::string& name = "");

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_CHAT_DATA_H_
