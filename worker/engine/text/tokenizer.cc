#include "worker/engine/text/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "unicode/uchar.h"
#include "unicode/utf8.h"
#include "worker/engine/text/json_file.h"

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

// tokenizer_config's special tokens, as written ("text" or {"content": ...}):
// the *_token fields and the additional_special_tokens list.
std::vector<Json> SpecialTokenEntries(const Json& config) {
  std::vector<Json> out;
  for (const char* field : {"bos_token", "eos_token", "unk_token", "pad_token",
                            "sep_token", "cls_token", "mask_token"}) {
    auto it = config.find(field);
    if (it != config.end() && (it->is_string() || it->is_object())) {
      out.push_back(*it);
    }
  }
  auto extra = config.find("additional_special_tokens");
  if (extra != config.end() && extra->is_array()) {
    for (const Json& t : *extra) {
      if (t.is_string() || t.is_object()) out.push_back(t);
    }
  }
  return out;
}

// A boolean field of tokenizer_config, or `fallback` when it is absent or
// null.
bool BoolField(const Json& config, const char* field, bool fallback) {
  auto it = config.find(field);
  return it == config.end() || it->is_null() ? fallback : it->get<bool>();
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
         c == '\f';
}

// Whether the character ending just before / starting at `pos` is a letter
// or digit.
bool WordCharBefore(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  int32_t i = static_cast<int32_t>(pos);
  UChar32 c;
  U8_PREV(text.data(), 0, i, c);
  return c >= 0 && (u_isalnum(c) || c == '_');
}
bool WordCharAt(std::string_view text, size_t pos) {
  if (pos >= text.size()) return false;
  int32_t i = static_cast<int32_t>(pos);
  UChar32 c;
  U8_NEXT(text.data(), i, static_cast<int32_t>(text.size()), c);
  return c >= 0 && (u_isalnum(c) || c == '_');
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(
    const std::string& model_dir, TokenizerFile file) {
  // nlohmann::json throws when a field has the wrong type (a number where a
  // string belongs); no exception leaves the loader.
  try {
    return LoadMayThrow(model_dir, file);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        model_dir,
        "/tokenizer_config.json: a field has the wrong type: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadMayThrow(
    const std::string& model_dir, TokenizerFile file) {
  const std::string json_path = model_dir + "/tokenizer.json";
  const std::string model_path = model_dir + "/tokenizer.model";
  const std::string config_path = model_dir + "/tokenizer_config.json";
  if (file == TokenizerFile::kAuto) {
    file = std::filesystem::exists(json_path) ? TokenizerFile::kTokenizerJson
                                              : TokenizerFile::kSentencePiece;
  }
  const std::string& tokenizer_path =
      file == TokenizerFile::kTokenizerJson ? json_path : model_path;
  if (!std::filesystem::exists(tokenizer_path)) {
    return absl::NotFoundError(
        absl::StrCat(tokenizer_path, " not found: the model has no tokenizer"));
  }
  ASSIGN_OR_RETURN(Json config, ReadJsonFile(config_path));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, " is not a JSON object"));
  }
  auto tokenizer = std::unique_ptr<Tokenizer>(new Tokenizer());
  if (file == TokenizerFile::kTokenizerJson) {
    ASSIGN_OR_RETURN(tokenizer->json_, TokenizerJson::Load(json_path));
    tokenizer->vocab_size_ = tokenizer->json_->model().vocab_size();
    tokenizer->added_tokens_ = tokenizer->json_->added_tokens();
  } else {
    std::string error;
    tokenizer->spm_ = SentencePieceModel::Load(model_path, &error);
    if (tokenizer->spm_ == nullptr) {
      return absl::DataLossError(
          absl::StrCat("cannot load ", model_path, ": ", error));
    }
    tokenizer->vocab_size_ = tokenizer->spm_->vocab_size();
    // Added tokens: id -> {"content": ..., "lstrip": ...}.
    auto added = config.find("added_tokens_decoder");
    if (added != config.end() && added->is_object()) {
      for (const auto& [key, value] : added->items()) {
        int32_t id = -1;
        try {
          id = std::stoi(key);
        } catch (const std::exception&) {
        }
        AddedToken token = AddedTokenFromJson(value, id);
        if (token.content.empty() || id < 0 || id >= kMaxTokenIds) {
          return absl::InvalidArgumentError(absl::StrCat(
              config_path, ": field \"added_tokens_decoder\" entry \"", key,
              "\" needs an integer id below ", kMaxTokenIds,
              " and a non-empty \"content\""));
        }
        tokenizer->added_tokens_.push_back(std::move(token));
      }
    }
    for (const Json& value : SpecialTokenEntries(config)) {
      AddedToken token = AddedTokenFromJson(value, -1);
      token.id = token.content.empty()
                     ? -1
                     : tokenizer->spm_->PieceToId(token.content);
      const bool listed = std::any_of(
          tokenizer->added_tokens_.begin(), tokenizer->added_tokens_.end(),
          [&](const AddedToken& t) { return t.content == token.content; });
      if (token.id < 0 || listed) continue;
      token.special = true;
      tokenizer->added_tokens_.push_back(std::move(token));
    }
  }
  for (const AddedToken& t : tokenizer->added_tokens_) {
    tokenizer->vocab_size_ = std::max(tokenizer->vocab_size_, t.id + 1);
    tokenizer->starts_added_token_[static_cast<unsigned char>(t.content[0])] =
        true;
  }
  std::stable_sort(tokenizer->added_tokens_.begin(),
                   tokenizer->added_tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) {
                     return a.content.size() > b.content.size();
                   });

  tokenizer->eos_token_ = TokenText(config.value("eos_token", Json()));
  tokenizer->eos_id_ = tokenizer->eos_token_.empty()
                           ? -1
                           : tokenizer->TokenToId(tokenizer->eos_token_);
  if (tokenizer->eos_id_ < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_path,
        ": field \"eos_token\" is missing or not in the vocabulary"));
  }
  tokenizer->bos_token_ = TokenText(config.value("bos_token", Json()));
  if (!tokenizer->bos_token_.empty()) {
    tokenizer->bos_id_ = tokenizer->TokenToId(tokenizer->bos_token_);
  }
  const std::string pad = TokenText(config.value("pad_token", Json()));
  tokenizer->pad_id_ = pad.empty() ? -1 : tokenizer->TokenToId(pad);
  if (tokenizer->pad_id_ < 0) tokenizer->pad_id_ = tokenizer->eos_id_;

  // What encode(text) adds (see EncodeWithSpecialTokens).
  if (config.contains("add_bos_token") || config.contains("add_eos_token") ||
      tokenizer->json_ == nullptr) {
    SpecialTokens special;
    if (BoolField(config, "add_bos_token", true) && tokenizer->bos_id_ >= 0) {
      special.prefix.push_back(tokenizer->bos_id_);
    }
    if (BoolField(config, "add_eos_token", false)) {
      special.suffix.push_back(tokenizer->eos_id_);
    }
    tokenizer->special_tokens_ = std::move(special);
  } else {
    tokenizer->special_tokens_ = tokenizer->json_->post_processor();
  }

  // transformers reads chat_template.jinja in preference to the config's
  // "chat_template" (the layout it saves since it moved templates out of
  // tokenizer_config.json).
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) {
    std::ifstream in(jinja_path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) {
      return absl::NotFoundError(absl::StrCat("cannot read ", jinja_path));
    }
    tokenizer->chat_template_ = text.str();
    return tokenizer;
  }
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

int32_t Tokenizer::TokenToId(const std::string& token) const {
  for (const AddedToken& t : added_tokens_) {
    if (t.content == token) return t.id;
  }
  return json_ != nullptr ? json_->model().TokenToId(token)
                          : spm_->PieceToId(token);
}

Tokenizer::Match Tokenizer::NextAddedToken(std::string_view text,
                                           size_t from) const {
  for (size_t pos = from; pos < text.size(); ++pos) {
    if (!starts_added_token_[static_cast<unsigned char>(text[pos])]) continue;
    for (const AddedToken& t : added_tokens_) {
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      const size_t end = pos + t.content.size();
      if (t.single_word &&
          (WordCharBefore(text, pos) || WordCharAt(text, end))) {
        continue;
      }
      Match m{&t, pos, end};
      if (t.lstrip) {
        while (m.begin > from && IsSpace(text[m.begin - 1])) --m.begin;
      }
      if (t.rstrip) {
        while (m.end < text.size() && IsSpace(text[m.end])) ++m.end;
      }
      return m;
    }
  }
  return Match{nullptr, text.size(), text.size()};
}

absl::Status Tokenizer::EncodeSegment(std::string_view text, size_t begin,
                                      size_t end, Encoding* out) const {
  if (begin == end) return absl::OkStatus();
  const std::string_view segment = text.substr(begin, end - begin);
  if (json_ != nullptr) {
    return json_->EncodeSegment(segment, begin, &out->ids, &out->ranges);
  }
  std::vector<SpmPiece> pieces;
  std::string error;
  if (!spm_->Encode(segment, &pieces, &error)) {
    return absl::InternalError(absl::StrCat("SentencePiece failed: ", error));
  }
  for (const SpmPiece& p : pieces) {
    out->ids.push_back(p.id);
    out->ranges.emplace_back(begin + p.begin, begin + p.end);
  }
  return absl::OkStatus();
}

absl::StatusOr<Encoding> Tokenizer::Encode(std::string_view text) const {
  Encoding out;
  size_t pos = 0;
  while (pos < text.size()) {
    const Match m = NextAddedToken(text, pos);
    RETURN_IF_ERROR(EncodeSegment(text, pos, m.begin, &out));
    if (m.token == nullptr) break;
    out.ids.push_back(m.token->id);
    out.ranges.emplace_back(m.begin, m.end);
    pos = m.end;
  }
  return out;
}

absl::StatusOr<Encoding> Tokenizer::EncodeWithSpecialTokens(
    std::string_view text) const {
  RETURN_IF_ERROR(special_tokens_.status());
  ASSIGN_OR_RETURN(Encoding body, Encode(text));
  Encoding out;
  for (int32_t id : special_tokens_->prefix) {
    out.ids.push_back(id);
    out.ranges.emplace_back(0, 0);
  }
  out.ids.insert(out.ids.end(), body.ids.begin(), body.ids.end());
  out.ranges.insert(out.ranges.end(), body.ranges.begin(), body.ranges.end());
  for (int32_t id : special_tokens_->suffix) {
    out.ids.push_back(id);
    out.ranges.emplace_back(text.size(), text.size());
  }
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(
    const std::vector<int32_t>& ids) const {
  auto added_content = [&](int32_t id) -> const std::string* {
    for (const AddedToken& t : added_tokens_) {
      if (t.id == id) return &t.content;
    }
    return nullptr;
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary"));
    }
  }
  if (json_ != nullptr) {
    std::vector<std::string> tokens;
    for (int32_t id : ids) {
      const std::string* added = added_content(id);
      tokens.push_back(added != nullptr ? *added
                                        : json_->model().IdToToken(id));
    }
    return json_->Decode(tokens);
  }
  // SentencePiece decodes runs of its own pieces; added tokens as written.
  std::string out;
  std::vector<int> run;
  std::string error;
  auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    std::string text;
    if (!spm_->Decode(run, &text, &error)) {
      return absl::InternalError(absl::StrCat("SentencePiece failed: ", error));
    }
    out += text;
    run.clear();
    return absl::OkStatus();
  };
  for (int32_t id : ids) {
    if (const std::string* added = added_content(id)) {
      RETURN_IF_ERROR(flush());
      out += *added;
    } else {
      run.push_back(id);
    }
  }
  RETURN_IF_ERROR(flush());
  return out;
}

}  // namespace lathe::engine
