#include "worker/engine/text/chat_template.h"

#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lathe::engine {
namespace {

// Jinja's `| trim`: Python's str.strip() (ASCII whitespace here).
std::string Trim(const std::string& s) {
  return std::string(absl::StripAsciiWhitespace(s));
}

// `s` with Jinja string-literal escapes (\n, \t, \', \", \\) resolved.
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool IsZephyr(const std::string& t) {
  return absl::StrContains(t, "'<|user|>\n'") &&
         absl::StrContains(t, "'<|system|>\n'") &&
         absl::StrContains(t, "'<|assistant|>\n'") &&
         absl::StrContains(t, "eos_token");
}
bool IsLlama3(const std::string& t) {
  return absl::StrContains(t, "<|start_header_id|>") &&
         absl::StrContains(t, "<|eot_id|>");
}
bool IsChatMl(const std::string& t) {
  return absl::StrContains(t, "<|im_start|>") &&
         absl::StrContains(t, "<|im_end|>");
}
bool IsMistral(const std::string& t) {
  return absl::StrContains(t, " [/INST]") && absl::StrContains(t, "[INST] ");
}

constexpr char kFamilies[] = "zephyr, llama3, chatml, mistral";

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Detect(
    const std::string& raw_template, const std::string& eos_token,
    const std::string& bos_token) {
  // Templates write newlines in their string literals both as "\n" escapes
  // and as raw newlines: look at them with escapes resolved.
  const std::string template_text = Unescape(raw_template);
  if (template_text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model has no chat template (neither chat_template.jinja nor "
        "tokenizer_config.json's chat_template); chat data needs one (or "
        "name a family with the chat_template option: ",
        kFamilies, ")"));
  }
  const char* name = IsZephyr(template_text)    ? "zephyr"
                     : IsLlama3(template_text)  ? "llama3"
                     : IsChatMl(template_text)  ? "chatml"
                     : IsMistral(template_text) ? "mistral"
                                                : nullptr;
  if (name == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported chat template (chat_template.jinja or "
        "tokenizer_config.json's chat_template; supported: ",
        kFamilies, "; the chat_template option can name one); it begins: ",
        template_text.substr(0, 80)));
  }
  return Named(name, raw_template, eos_token, bos_token);
}

absl::StatusOr<ChatTemplate> ChatTemplate::Named(
    const std::string& name, const std::string& raw_template,
    const std::string& eos_token, const std::string& bos_token) {
  const std::string template_text = Unescape(raw_template);
  if (name == "zephyr") {
    return ChatTemplate(Family::kZephyr, eos_token, bos_token);
  }
  if (name == "llama3") {
    ChatTemplate t(Family::kLlama3, eos_token, bos_token);
    if (absl::StrContains(template_text, "Cutting Knowledge Date")) {
      t.llama_system_block_ = true;
      // The date the template sets: today's when it calls strftime_now
      // (as transformers provides it), else its default date_string.
      std::string date = "26 Jul 2024";
      const std::string set = "set date_string = \"";
      const size_t at = template_text.find(set);
      if (at != std::string::npos) {
        const size_t begin = at + set.size();
        date =
            template_text.substr(begin, template_text.find('"', begin) - begin);
      }
      if (absl::StrContains(template_text, "strftime_now")) {
        char buf[32];
        const std::time_t now = std::time(nullptr);
        std::tm tm;
        localtime_r(&now, &tm);
        std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
        date = buf;
      }
      t.llama_date_ = date;
    }
    return t;
  }
  if (name == "chatml") {
    ChatTemplate t(Family::kChatMl, eos_token, bos_token);
    // A constant '<|im_start|>system\n...<|im_end|>\n' is the default
    // system prompt (Qwen2, Qwen2.5, SmolLM2).
    const std::string open = "<|im_start|>system\n";
    for (size_t at = template_text.find(open); at != std::string::npos;
         at = template_text.find(open, at + 1)) {
      const size_t begin = at + open.size();
      const size_t end = template_text.find("<|im_end|>", begin);
      if (end == std::string::npos) break;
      const std::string body = template_text.substr(begin, end - begin);
      if (body.find_first_of("'\"{}") == std::string::npos) {
        t.chatml_default_system_ = body;
        t.chatml_has_default_system_ = true;
        break;
      }
    }
    return t;
  }
  if (name == "mistral") {
    ChatTemplate t(Family::kMistral, eos_token, bos_token);
    t.mistral_spaced_ = absl::StrContains(template_text, "' [INST] '");
    return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown chat_template \"", name, "\" (supported: ", kFamilies, ")"));
}

RenderedChat ChatTemplate::Render(
    const std::vector<ChatMessage>& messages) const {
  RenderedChat out;
  switch (family_) {
    case Family::kZephyr:
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        absl::StrAppend(&out.text, "<|", m.role, "|>\n");
        const size_t begin = out.text.size();
        absl::StrAppend(&out.text, m.content, eos_token_);
        if (m.role == "assistant" && m.train) {
          out.trainable.push_back(
              {begin, out.text.size(), static_cast<int>(i)});
        }
        out.text += "\n";
      }
      break;
    case Family::kLlama3:
      RenderLlama3(messages, &out);
      break;
    case Family::kChatMl:
      RenderChatMl(messages, &out);
      break;
    case Family::kMistral:
      RenderMistral(messages, &out);
      break;
  }
  return out;
}

std::string ChatTemplate::RenderPrompt(
    const std::vector<ChatMessage>& messages) const {
  std::string text = Render(messages).text;
  switch (family_) {
    case Family::kZephyr:
      return text + "<|assistant|>\n";
    case Family::kLlama3:
      return text + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case Family::kChatMl:
      return text + "<|im_start|>assistant\n";
    case Family::kMistral:
      return text;
  }
  return text;
}

std::string ChatTemplate::EndOfTurn() const {
  switch (family_) {
    case Family::kLlama3:
      return "<|eot_id|>";
    case Family::kChatMl:
      return "<|im_end|>";
    case Family::kZephyr:
    case Family::kMistral:
      return eos_token_;
  }
  return eos_token_;
}

void ChatTemplate::RenderLlama3(const std::vector<ChatMessage>& messages,
                                RenderedChat* out) const {
  out->text = bos_token_;
  size_t first = 0;
  if (llama_system_block_) {
    // 3.1+: the system message, if any, goes into the dated system block.
    std::string system;
    if (!messages.empty() && messages[0].role == "system") {
      system = Trim(messages[0].content);
      first = 1;
    }
    absl::StrAppend(&out->text,
                    "<|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: ",
                    llama_date_, "\n\n", system, "<|eot_id|>");
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    absl::StrAppend(&out->text, "<|start_header_id|>", m.role,
                    "<|end_header_id|>\n\n");
    const size_t begin = out->text.size();
    absl::StrAppend(&out->text, Trim(m.content), "<|eot_id|>");
    if (m.role == "assistant" && m.train) {
      out->trainable.push_back({begin, out->text.size(), static_cast<int>(i)});
    }
  }
}

void ChatTemplate::RenderChatMl(const std::vector<ChatMessage>& messages,
                                RenderedChat* out) const {
  if (chatml_has_default_system_ &&
      (messages.empty() || messages[0].role != "system")) {
    absl::StrAppend(&out->text, "<|im_start|>system\n", chatml_default_system_,
                    "<|im_end|>\n");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    absl::StrAppend(&out->text, "<|im_start|>", m.role, "\n");
    const size_t begin = out->text.size();
    absl::StrAppend(&out->text, m.content, "<|im_end|>");
    if (m.role == "assistant" && m.train) {
      out->trainable.push_back({begin, out->text.size(), static_cast<int>(i)});
    }
    out->text += "\n";
  }
}

void ChatTemplate::RenderMistral(const std::vector<ChatMessage>& messages,
                                 RenderedChat* out) const {
  out->text = bos_token_;
  size_t first = 0;
  std::string system;
  if (!messages.empty() && messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  }
  const char* inst = mistral_spaced_ ? " [INST] " : "[INST] ";
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "assistant") {
      if (mistral_spaced_) out->text += " ";
      const size_t begin = out->text.size();
      absl::StrAppend(&out->text, m.content, eos_token_);
      if (m.train) {
        out->trainable.push_back(
            {begin, out->text.size(), static_cast<int>(i)});
      }
      continue;
    }
    absl::StrAppend(&out->text, inst);
    if (i == first && first == 1) absl::StrAppend(&out->text, system, "\n\n");
    absl::StrAppend(&out->text, m.content, " [/INST]");
  }
}

}  // namespace lathe::engine
