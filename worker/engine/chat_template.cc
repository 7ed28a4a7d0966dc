#include "worker/engine/chat_template.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lathe::engine {

absl::StatusOr<ChatTemplate> ChatTemplate::Detect(
    const std::string& template_text, const std::string& eos_token) {
  if (template_text.empty()) {
    return absl::InvalidArgumentError(
        "tokenizer_config.json has no chat_template; chat data needs one");
  }
  // Zephyr: '<|user|>\n' + content + eos_token, same for system/assistant.
  const bool zephyr = absl::StrContains(template_text, "'<|user|>\n'") &&
                      absl::StrContains(template_text, "'<|system|>\n'") &&
                      absl::StrContains(template_text, "'<|assistant|>\n'") &&
                      absl::StrContains(template_text, "eos_token");
  if (!zephyr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported chat_template (supported: zephyr); it begins: ",
        template_text.substr(0, 80)));
  }
  return ChatTemplate(eos_token);
}

RenderedChat ChatTemplate::Render(
    const std::vector<ChatMessage>& messages) const {
  RenderedChat out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    absl::StrAppend(&out.text, "<|", m.role, "|>\n");
    const size_t begin = out.text.size();
    absl::StrAppend(&out.text, m.content, eos_token_);
    if (m.role == "assistant" && m.train) {
      out.trainable.push_back({begin, out.text.size(), static_cast<int>(i)});
    }
    out.text += "\n";
  }
  return out;
}

}  // namespace lathe::engine
