// Rendering chat conversations the way a model's tokenizer_config
// `chat_template` does, and marking which characters are trained on.
// Torch-free. Supported: the zephyr template (TinyLlama-Chat, Zephyr).
#ifndef LATHE_WORKER_ENGINE_CHAT_TEMPLATE_H_
#define LATHE_WORKER_ENGINE_CHAT_TEMPLATE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lathe::engine {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
  bool train = true;  // assistant turns only: false for "weight": 0
};

// Byte range [begin, end) of the rendered text that is a training target:
// an assistant message's content and its end-of-turn token.
struct TrainableRange {
  size_t begin = 0;
  size_t end = 0;
  int message = 0;  // index into the conversation's messages
};

struct RenderedChat {
  std::string text;
  std::vector<TrainableRange> trainable;  // in text order
};

class ChatTemplate {
 public:
  // Recognizes `template_text` (tokenizer_config's chat_template).
  // INVALID_ARGUMENT when it is empty or not one this engine can render.
  static absl::StatusOr<ChatTemplate> Detect(const std::string& template_text,
                                             const std::string& eos_token);

  // Renders a whole conversation (no generation prompt). Assistant messages
  // with train == false are rendered but not marked trainable.
  RenderedChat Render(const std::vector<ChatMessage>& messages) const;

 private:
  explicit ChatTemplate(std::string eos_token)
      : eos_token_(std::move(eos_token)) {}

  std::string eos_token_;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_CHAT_TEMPLATE_H_
