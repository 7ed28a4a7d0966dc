#include "worker/engine/chat_data.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

absl::StatusOr<ChatMessage> ParseMessage(const Json& m,
                                         const std::string& where) {
  if (!m.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
  }
  ChatMessage message;
  auto role = m.find("role");
  if (role == m.end() || !role->is_string() ||
      (*role != "system" && *role != "user" && *role != "assistant")) {
    return absl::InvalidArgumentError(absl::StrCat(
        where,
        ": field \"role\" must be \"system\", \"user\" or \"assistant\""));
  }
  message.role = role->get<std::string>();
  auto content = m.find("content");
  if (content == m.end() || !content->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": field \"content\" must be a string"));
  }
  message.content = content->get<std::string>();
  auto weight = m.find("weight");
  if (weight != m.end()) {
    if (!weight->is_number_integer() || (*weight != 0 && *weight != 1) ||
        message.role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field \"weight\" must be 0 or 1, on assistant messages"));
    }
    message.train = *weight == 1;
  }
  return message;
}

absl::StatusOr<Conversation> ParseLine(const std::string& text,
                                       const std::string& where) {
  Json line = Json::parse(text, nullptr, false);
  if (line.is_discarded() || !line.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not a JSON object"));
  }
  auto messages = line.find("messages");
  if (messages == line.end() || !messages->is_array() || messages->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": field \"messages\" must be a non-empty list"));
  }
  Conversation conversation;
  bool has_assistant = false;
  for (size_t i = 0; i < messages->size(); ++i) {
    ASSIGN_OR_RETURN(ChatMessage message,
                     ParseMessage((*messages)[i],
                                  absl::StrCat(where, ": messages[", i, "]")));
    has_assistant |= message.role == "assistant";
    conversation.messages.push_back(std::move(message));
  }
  if (!has_assistant) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": no assistant message to train on"));
  }
  return conversation;
}

}  // namespace

absl::StatusOr<std::vector<Conversation>> ReadChatJsonl(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<Conversation> out;
  std::string text;
  for (int line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    ASSIGN_OR_RETURN(Conversation conversation,
                     ParseLine(text, absl::StrCat(path, ":", line)));
    conversation.line = line;
    out.push_back(std::move(conversation));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds no conversation"));
  }
  return out;
}

absl::StatusOr<TokenizedChat> TokenizeChat(
    const Tokenizer& tokenizer, const ChatTemplate& chat_template,
    const std::vector<ChatMessage>& messages) {
  const RenderedChat rendered = chat_template.Render(messages);
  ASSIGN_OR_RETURN(Encoding encoding, tokenizer.Encode(rendered.text));
  TokenizedChat out;
  out.ids = std::move(encoding.ids);
  out.message.assign(out.ids.size(), -1);
  // Ranges and tokens both run in text order: walk them together.
  size_t r = 0;
  for (size_t i = 0; i < out.ids.size(); ++i) {
    const auto [begin, end] = encoding.ranges[i];
    while (r < rendered.trainable.size() &&
           rendered.trainable[r].end <= begin) {
      ++r;
    }
    if (r < rendered.trainable.size() && begin < rendered.trainable[r].end &&
        end > rendered.trainable[r].begin) {
      out.message[i] = rendered.trainable[r].message;
    }
  }
  return out;
}

absl::StatusOr<Dataset> LoadChatDataset(const std::string& path,
                                        const Tokenizer& tokenizer,
                                        const ChatTemplate& chat_template,
                                        int max_seq_len) {
  ASSIGN_OR_RETURN(std::vector<Conversation> conversations,
                   ReadChatJsonl(path));
  Dataset dataset;
  for (const Conversation& conversation : conversations) {
    ASSIGN_OR_RETURN(TokenizedChat chat, TokenizeChat(tokenizer, chat_template,
                                                      conversation.messages));
    Example example;
    example.ids = std::move(chat.ids);
    for (int m : chat.message) example.loss_mask.push_back(m >= 0 ? 1 : 0);
    if (example.ids.size() > static_cast<size_t>(max_seq_len)) {
      example.ids.resize(max_seq_len);
      example.loss_mask.resize(max_seq_len);
      ++dataset.truncated;
    }
    // Position 0 has no preceding token, so it is never a target.
    example.loss_mask[0] = 0;
    if (std::find(example.loss_mask.begin(), example.loss_mask.end(), 1) ==
        example.loss_mask.end()) {
      ++dataset.dropped;
      continue;
    }
    dataset.examples.push_back(std::move(example));
  }
  if (dataset.truncated > 0 || dataset.dropped > 0) {
    spdlog::warn(
        "{}: {} of {} conversations truncated to max_seq_len {}, {} "
        "dropped for lack of assistant tokens",
        path, dataset.truncated, conversations.size(), max_seq_len,
        dataset.dropped);
  }
  if (dataset.examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": no conversation keeps an assistant token within max_seq_len ",
        max_seq_len));
  }
  return dataset;
}

}  // namespace lathe::engine
