#include "worker/engine/data/chat_data.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace lathe::engine {
namespace {

// One line through the upload validator's parser, as a DataRecord.
absl::StatusOr<DataRecord> ParseLine(absl::string_view text,
                                     const std::string& where) {
  absl::StatusOr<DataExample> example = ParseDataLine(text);
  if (!example.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", example.status().message()));
  }
  DataRecord record;
  record.format = example->format;
  auto convert = [](std::vector<DataMessage>& from,
                    std::vector<ChatMessage>& to) {
    for (DataMessage& m : from) {
      to.push_back({RoleName(m.role), std::move(m.content), m.train});
    }
  };
  convert(example->messages, record.messages);
  convert(example->preferred, record.preferred);
  convert(example->non_preferred, record.non_preferred);
  record.prompt = std::move(example->prompt);
  record.completion = std::move(example->completion);
  record.text = std::move(example->text);
  return record;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplateFor(const Tokenizer& tokenizer,
                                             const std::string& name) {
  if (name.empty()) {
    return ChatTemplate::Detect(tokenizer.chat_template(),
                                tokenizer.eos_token(), tokenizer.bos_token());
  }
  return ChatTemplate::Named(name, tokenizer.chat_template(),
                             tokenizer.eos_token(), tokenizer.bos_token());
}

absl::StatusOr<std::vector<DataRecord>> ReadDataJsonl(const std::string& path,
                                                      const std::string& name,
                                                      std::vector<std::string>* texts) {
  const std::string& file = name.empty() ? path : name;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", file));
  std::vector<DataRecord> out;
  DataFileFormat file_format;
  std::string text;
  for (int line = 1; std::getline(in, text); ++line) {
    if (IsBlankDataLine(text)) continue;
    const std::string where = absl::StrCat(file, ": line ", line);
    ASSIGN_OR_RETURN(DataRecord record, ParseLine(text, where));
    record.line = line;
    if (absl::Status st = file_format.Add(record.format, line); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", st.message()));
    }
    out.push_back(std::move(record));
    if (texts != nullptr) texts->push_back(text);
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, " holds no example"));
  }
  return out;
}

absl::StatusOr<std::vector<Conversation>> ReadChatJsonl(
    const std::string& path) {
  ASSIGN_OR_RETURN(std::vector<DataRecord> records, ReadDataJsonl(path));
  std::vector<Conversation> out;
  for (DataRecord& r : records) {
    if (r.format != DataFormat::kChat) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": line ", r.line, ": not a chat (\"messages\") line"));
    }
    out.push_back({std::move(r.messages), r.line});
  }
  return out;
}

absl::StatusOr<TokenizedChat> TokenizeChat(
    const Tokenizer& tokenizer, const ChatTemplate& chat_template,
    const std::vector<ChatMessage>& messages) {
  const RenderedChat rendered = chat_template.Render(messages);
  ASSIGN_OR_RETURN(Encoding encoding, tokenizer.Encode(rendered.text));
  TokenizedChat out;
  out.text = rendered.text;
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

std::vector<int32_t> ReplyStopIds(const Tokenizer& tokenizer,
                                  const ChatTemplate* chat_template) {
  std::vector<int32_t> ids = {tokenizer.eos_id()};
  if (chat_template != nullptr) {
    const int32_t end_of_turn = tokenizer.TokenToId(chat_template->EndOfTurn());
    if (end_of_turn >= 0 && end_of_turn != tokenizer.eos_id()) {
      ids.push_back(end_of_turn);
    }
  }
  return ids;
}

absl::StatusOr<Example> TokenizeRecord(const Tokenizer& tokenizer,
                                       const ChatTemplate* chat_template,
                                       const DataRecord& record) {
  Example example;
  if (record.format == DataFormat::kPreference) {
    return absl::InvalidArgumentError(
        "a preference line (input, preferred_output, non_preferred_output); "
        "supervised fine-tuning trains on chat, prompt/completion or text "
        "lines: train this file with method dpo or orpo");
  }
  if (record.format == DataFormat::kChat) {
    if (chat_template == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", record.line, ": chat data needs a template"));
    }
    ASSIGN_OR_RETURN(TokenizedChat chat,
                     TokenizeChat(tokenizer, *chat_template, record.messages));
    example.ids = std::move(chat.ids);
    for (int m : chat.message) example.loss_mask.push_back(m >= 0 ? 1 : 0);
  } else {
    const std::string text = record.format == DataFormat::kText
                                 ? record.text
                                 : record.prompt + record.completion;
    // Trained: tokens that reach past the prompt (all of them for text).
    const size_t trained_from =
        record.format == DataFormat::kText ? 0 : record.prompt.size();
    ASSIGN_OR_RETURN(Encoding encoding, tokenizer.Encode(text));
    example.ids = std::move(encoding.ids);
    for (const auto& [begin, end] : encoding.ranges) {
      example.loss_mask.push_back(end > trained_from ? 1 : 0);
    }
    example.ids.push_back(tokenizer.eos_id());
    example.loss_mask.push_back(1);
  }
  if (!example.loss_mask.empty()) example.loss_mask[0] = 0;
  return example;
}

absl::StatusOr<Dataset> LoadChatDataset(
    const std::string& path, const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, int max_seq_len,
    const std::string& name) {
  const std::string& file = name.empty() ? path : name;
  ASSIGN_OR_RETURN(std::vector<DataRecord> records, ReadDataJsonl(path, name));
  Dataset dataset;
  for (const DataRecord& record : records) {
    if (record.format == DataFormat::kChat && !chat_template.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": line ", record.line,
                       ": chat data needs the model's chat template: ",
                       chat_template.status().message()));
    }
    absl::StatusOr<Example> tokenized = TokenizeRecord(
        tokenizer, chat_template.ok() ? &*chat_template : nullptr, record);
    if (!tokenized.ok()) {
      return absl::Status(tokenized.status().code(),
                          absl::StrCat(file, ": line ", record.line, ": ",
                                       tokenized.status().message()));
    }
    Example example = *std::move(tokenized);
    const size_t full_size = example.ids.size();
    if (full_size > static_cast<size_t>(max_seq_len)) {
      example.ids.resize(max_seq_len);
      example.loss_mask.resize(max_seq_len);
      ++dataset.truncated;
    }
    if (std::find(example.loss_mask.begin(), example.loss_mask.end(), 1) ==
        example.loss_mask.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": line ", record.line,
          ": no token to train on within max_seq_len ", max_seq_len,
          " (the example has ", full_size, " tokens)"));
    }
    dataset.examples.push_back(std::move(example));
  }
  if (dataset.truncated > 0) {
    spdlog::warn("{}: {} of {} examples truncated to max_seq_len {}", file,
                 dataset.truncated, records.size(), max_seq_len);
  }
  return dataset;
}

}  // namespace lathe::engine
