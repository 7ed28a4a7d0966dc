// Rendering chat conversations the way a model's tokenizer_config
// `chat_template` does, and marking which characters are trained on.
// Torch-free.
//
// The Jinja template is not run: it is recognized as one of these families,
// each rendered by hand exactly as its template text does (checked against
// strings written from the templates in chat_template_test.cc):
//   zephyr   TinyLlama-Chat, Zephyr:  <|role|>\n content eos \n
//   llama3   Llama 3 / 3.1 / 3.2:     bos <|start_header_id|>role
//            <|end_header_id|>\n\n content|trim <|eot_id|>; the 3.1+
//            templates' "Cutting Knowledge Date" system block included
//   chatml   Qwen2 / Qwen2.5, SmolLM2: <|im_start|>role\n content
//            <|im_end|>\n, with the template's default system prompt when
//            the conversation has none
//   mistral  Mistral Instruct:        bos [INST] user [/INST] answer eos,
//            a system message folded into the first user turn
#ifndef LATHE_WORKER_ENGINE_TEXT_CHAT_TEMPLATE_H_
#define LATHE_WORKER_ENGINE_TEXT_CHAT_TEMPLATE_H_

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

// Copyable, immutable; thread-safe.
class ChatTemplate {
 public:
  enum class Family { kZephyr, kLlama3, kChatMl, kMistral };

  // Recognizes `template_text` (Tokenizer::chat_template()).
  // INVALID_ARGUMENT, naming tokenizer_config.json's chat_template and the
  // `chat_template` option, when it is empty or not one of the families.
  static absl::StatusOr<ChatTemplate> Detect(const std::string& template_text,
                                             const std::string& eos_token,
                                             const std::string& bos_token = "");

  // The family named `name` ("zephyr", "llama3", "chatml", "mistral"),
  // taking its details (Llama 3.1's date block, ChatML's default system
  // prompt, Mistral's spacing) from `template_text` when it is of that
  // family. INVALID_ARGUMENT for an unknown name.
  static absl::StatusOr<ChatTemplate> Named(const std::string& name,
                                            const std::string& template_text,
                                            const std::string& eos_token,
                                            const std::string& bos_token = "");

  // Renders a whole conversation (no generation prompt). Assistant messages
  // with train == false are rendered but not marked trainable.
  RenderedChat Render(const std::vector<ChatMessage>& messages) const;

  // The text that opens the assistant's answer after `messages` (the
  // template's add_generation_prompt part appended to Render's text).
  std::string RenderPrompt(const std::vector<ChatMessage>& messages) const;

  // The token that ends an assistant turn: "<|eot_id|>" (llama3),
  // "<|im_end|>" (chatml), else the EOS token.
  std::string EndOfTurn() const;

  Family family() const { return family_; }

 private:
  ChatTemplate(Family family, std::string eos_token, std::string bos_token)
      : family_(family),
        eos_token_(std::move(eos_token)),
        bos_token_(std::move(bos_token)) {}

  void RenderLlama3(const std::vector<ChatMessage>& messages,
                    RenderedChat* out) const;
  void RenderChatMl(const std::vector<ChatMessage>& messages,
                    RenderedChat* out) const;
  void RenderMistral(const std::vector<ChatMessage>& messages,
                     RenderedChat* out) const;

  Family family_;
  std::string eos_token_;
  std::string bos_token_;
  // llama3: the date line of the 3.1+ system block ("" for Llama 3.0).
  std::string llama_date_;
  bool llama_system_block_ = false;
  // chatml: the system prompt used when the conversation has none.
  std::string chatml_default_system_;
  bool chatml_has_default_system_ = false;
  // mistral: " [INST] " / " " + answer (v0.2+) or "[INST] " / answer (v0.1).
  bool mistral_spaced_ = false;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_CHAT_TEMPLATE_H_
