#include "worker/engine/tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/json_file.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// A special token in tokenizer_config is either "text" or {"content": "text"}.
std::string TokenText(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") &&
      value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(
    const std::string& model_dir) {
  const std::string model_path = model_dir + "/tokenizer.model";
  const std::string config_path = model_dir + "/tokenizer_config.json";
  if (!std::filesystem::exists(model_path)) {
    return absl::NotFoundError(absl::StrCat(
        model_path,
        " not found: only SentencePiece tokenizers are supported so far"));
  }
  std::string error;
  auto tokenizer = std::unique_ptr<Tokenizer>(new Tokenizer());
  tokenizer->spm_ = SentencePieceModel::Load(model_path, &error);
  if (tokenizer->spm_ == nullptr) {
    return absl::DataLossError(
        absl::StrCat("cannot load ", model_path, ": ", error));
  }
  ASSIGN_OR_RETURN(Json config, ReadJsonFile(config_path));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, " is not a JSON object"));
  }
  tokenizer->vocab_size_ = tokenizer->spm_->vocab_size();

  // Added tokens: id -> {"content": ...}.
  auto added = config.find("added_tokens_decoder");
  if (added != config.end() && added->is_object()) {
    for (const auto& [key, value] : added->items()) {
      const std::string content = TokenText(value);
      int32_t id = -1;
      try {
        id = std::stoi(key);
      } catch (const std::exception&) {
      }
      if (content.empty() || id < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            config_path, ": field \"added_tokens_decoder\" entry \"", key,
            "\" needs an integer id and a non-empty \"content\""));
      }
      tokenizer->added_tokens_.emplace_back(content, id);
      tokenizer->vocab_size_ = std::max(tokenizer->vocab_size_, id + 1);
    }
  }
  std::stable_sort(tokenizer->added_tokens_.begin(),
                   tokenizer->added_tokens_.end(),
                   [](const auto& a, const auto& b) {
                     return a.first.size() > b.first.size();
                   });

  auto id_of = [&](const std::string& text) -> int32_t {
    for (const auto& [content, id] : tokenizer->added_tokens_) {
      if (content == text) return id;
    }
    return tokenizer->spm_->PieceToId(text);
  };
  tokenizer->eos_token_ = TokenText(config.value("eos_token", Json()));
  tokenizer->eos_id_ =
      tokenizer->eos_token_.empty() ? -1 : id_of(tokenizer->eos_token_);
  if (tokenizer->eos_id_ < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_path,
        ": field \"eos_token\" is missing or not in the vocabulary"));
  }
  const std::string pad = TokenText(config.value("pad_token", Json()));
  tokenizer->pad_id_ = pad.empty() ? -1 : id_of(pad);
  if (tokenizer->pad_id_ < 0) tokenizer->pad_id_ = tokenizer->eos_id_;

  auto chat_template = config.find("chat_template");
  if (chat_template != config.end() && chat_template->is_string()) {
    tokenizer->chat_template_ = chat_template->get<std::string>();
  } else if (chat_template != config.end() && chat_template->is_array()) {
    // The list form: [{"name": "default", "template": "..."}, ...].
    for (const Json& entry : *chat_template) {
      if (entry.is_object() && entry.value("name", "") == "default") {
        tokenizer->chat_template_ = entry.value("template", "");
      }
    }
  }
  return tokenizer;
}

const std::pair<std::string, int32_t>* Tokenizer::AddedTokenAt(
    std::string_view text, size_t pos) const {
  for (const auto& token : added_tokens_) {
    if (text.substr(pos, token.first.size()) == token.first) return &token;
  }
  return nullptr;
}

absl::StatusOr<Encoding> Tokenizer::Encode(std::string_view text) const {
  Encoding out;
  std::vector<SpmPiece> pieces;
  std::string error;
  // Encodes text[begin, end) with SentencePiece, offsetting the ranges.
  auto encode_segment = [&](size_t begin, size_t end) -> absl::Status {
    if (begin == end) return absl::OkStatus();
    if (!spm_->Encode(text.substr(begin, end - begin), &pieces, &error)) {
      return absl::InternalError(absl::StrCat("SentencePiece failed: ", error));
    }
    for (const SpmPiece& p : pieces) {
      out.ids.push_back(p.id);
      out.ranges.emplace_back(begin + p.begin, begin + p.end);
    }
    return absl::OkStatus();
  };
  size_t segment_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    const auto* token = AddedTokenAt(text, pos);
    if (token == nullptr) {
      ++pos;
      continue;
    }
    RETURN_IF_ERROR(encode_segment(segment_begin, pos));
    out.ids.push_back(token->second);
    out.ranges.emplace_back(pos, pos + token->first.size());
    pos += token->first.size();
    segment_begin = pos;
  }
  RETURN_IF_ERROR(encode_segment(segment_begin, text.size()));
  return out;
}

}  // namespace lathe::engine
