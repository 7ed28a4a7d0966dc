#include "worker/engine/data/preference_data.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace lathe::engine {
namespace {

// input.messages + [reply], only the reply trained.
absl::StatusOr<Example> Row(const Tokenizer& tokenizer,
                            const ChatTemplate& chat_template,
                            const std::vector<ChatMessage>& prompt,
                            const ChatMessage& reply) {
  std::vector<ChatMessage> messages = prompt;
  for (ChatMessage& m : messages) m.train = false;
  messages.push_back(reply);
  messages.back().train = true;
  ASSIGN_OR_RETURN(TokenizedChat chat,
                   TokenizeChat(tokenizer, chat_template, messages));
  const int reply_index = static_cast<int>(messages.size()) - 1;
  Example example;
  example.ids = std::move(chat.ids);
  for (const int m : chat.message) {
    example.loss_mask.push_back(m == reply_index ? 1 : 0);
  }
  // The completion ends at its last trained token (the end-of-turn): what
  // the template renders after it is dropped.
  const auto last = std::find(example.loss_mask.rbegin(),
                              example.loss_mask.rend(), 1);
  if (last == example.loss_mask.rend()) {
    return absl::InvalidArgumentError("the reply renders to no token");
  }
  const size_t end = example.loss_mask.rend() - last;
  example.ids.resize(end);
  example.loss_mask.resize(end);
  example.loss_mask[0] = 0;
  return example;
}

// Keeps the last `max_prompt_len` tokens of the prompt (the tokens before
// the first target) and then the first `max_seq_len` tokens.
bool Truncate(Example& row, int max_prompt_len, int max_seq_len) {
  bool cut = false;
  const size_t prompt_len =
      std::find(row.loss_mask.begin(), row.loss_mask.end(), 1) -
      row.loss_mask.begin();
  if (prompt_len > static_cast<size_t>(max_prompt_len)) {
    const size_t drop = prompt_len - max_prompt_len;
    row.ids.erase(row.ids.begin(), row.ids.begin() + drop);
    row.loss_mask.erase(row.loss_mask.begin(),
                        row.loss_mask.begin() + drop);
    cut = true;
  }
  if (row.ids.size() > static_cast<size_t>(max_seq_len)) {
    row.ids.resize(max_seq_len);
    row.loss_mask.resize(max_seq_len);
    cut = true;
  }
  return cut;
}

}  // namespace

absl::StatusOr<PreferencePair> TokenizePreference(
    const Tokenizer& tokenizer, const ChatTemplate& chat_template,
    const DataRecord& record) {
  if (record.format != DataFormat::kPreference || record.preferred.size() != 1 ||
      record.non_preferred.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", DataFormatName(record.format),
        " line; preference training (dpo, orpo) takes preference lines: "
        "{\"input\": {\"messages\": [...]}, \"preferred_output\": [...], "
        "\"non_preferred_output\": [...]}"));
  }
  PreferencePair pair;
  pair.line = record.line;
  ASSIGN_OR_RETURN(pair.chosen, Row(tokenizer, chat_template, record.messages,
                                    record.preferred[0]));
  ASSIGN_OR_RETURN(pair.rejected,
                   Row(tokenizer, chat_template, record.messages,
                       record.non_preferred[0]));
  return pair;
}

bool TruncatePair(PreferencePair& pair, int max_prompt_len, int max_seq_len) {
  const bool chosen = Truncate(pair.chosen, max_prompt_len, max_seq_len);
  const bool rejected = Truncate(pair.rejected, max_prompt_len, max_seq_len);
  return chosen || rejected;
}

absl::StatusOr<PreferenceDataset> LoadPreferenceDataset(
    const std::string& path, const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, int max_prompt_len,
    int max_seq_len, const std::string& name) {
  const std::string& file = name.empty() ? path : name;
  ASSIGN_OR_RETURN(std::vector<DataRecord> records, ReadDataJsonl(path, name));
  PreferenceDataset dataset;
  for (const DataRecord& record : records) {
    const std::string where = absl::StrCat(file, ": line ", record.line);
    if (record.format == DataFormat::kPreference && !chat_template.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": preference data needs the model's chat "
                              "template: ",
                       chat_template.status().message()));
    }
    absl::StatusOr<PreferencePair> pair =
        chat_template.ok()
            ? TokenizePreference(tokenizer, *chat_template, record)
            : absl::InvalidArgumentError(absl::StrCat(
                  "a ", DataFormatName(record.format),
                  " line; preference training (dpo, orpo) takes preference "
                  "lines"));
    if (!pair.ok()) {
      return absl::Status(pair.status().code(),
                          absl::StrCat(where, ": ", pair.status().message()));
    }
    dataset.truncated += TruncatePair(*pair, max_prompt_len, max_seq_len);
    dataset.pairs.push_back(*std::move(pair));
  }
  if (dataset.truncated > 0) {
    spdlog::warn(
        "{}: {} of {} pairs truncated (prompt to its last {} tokens, rows to "
        "max_seq_len {})",
        file, dataset.truncated, records.size(), max_prompt_len, max_seq_len);
  }
  return dataset;
}

std::vector<Example> PairRows(const std::vector<PreferencePair>& pairs,
                              const std::vector<size_t>& indices) {
  std::vector<Example> rows;
  rows.reserve(2 * indices.size());
  for (const size_t i : indices) rows.push_back(pairs[i].chosen);
  for (const size_t i : indices) rows.push_back(pairs[i].rejected);
  return rows;
}

}  // namespace lathe::engine
