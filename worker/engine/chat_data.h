// Chat training data: OpenAI chat JSONL -> rendered, tokenized examples with
// a loss mask over the assistant turns. Torch-free.
#ifndef LATHE_WORKER_ENGINE_CHAT_DATA_H_
#define LATHE_WORKER_ENGINE_CHAT_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/chat_template.h"
#include "worker/engine/tokenizer.h"

namespace lathe::engine {

struct Conversation {
  std::vector<ChatMessage> messages;
  int line = 0;  // 1-based line in the file
};

// Reads {"messages": [{"role": ..., "content": ..., "weight": 0|1}]} lines
// (blank lines skipped). INVALID_ARGUMENT naming the file and line for bad
// JSON, a missing/unknown role, non-string content, a bad weight or a
// conversation without an assistant message; NOT_FOUND if unreadable.
absl::StatusOr<std::vector<Conversation>> ReadChatJsonl(
    const std::string& path);

// A rendered conversation as tokens. message[i] is the index of the message
// whose trainable range token i overlaps, or -1.
struct TokenizedChat {
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

struct Dataset {
  std::vector<Example> examples;
  int64_t truncated = 0;  // conversations cut to max_seq_len
  int64_t dropped = 0;    // left with no target after truncation
};

// Reads, renders, tokenizes and truncates a chat JSONL file (logging what
// was truncated or dropped). INVALID_ARGUMENT as ReadChatJsonl, or when no
// example is left.
absl::StatusOr<Dataset> LoadChatDataset(const std::string& path,
                                        const Tokenizer& tokenizer,
                                        const ChatTemplate& chat_template,
                                        int max_seq_len);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_CHAT_DATA_H_
