#include "worker/engine/text/tokenizer_json.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "unicode/utf8.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

using Json = nlohmann::json;

AddedToken AddedTokenFromJson(const Json& json, int32_t id) {
  AddedToken t;
  t.id = id;
  if (json.is_string()) {
    t.content = json.get<std::string>();
    return t;
  }
  t.content = json.value("content", "");
  t.lstrip = json.value("lstrip", false);
  t.rstrip = json.value("rstrip", false);
  t.single_word = json.value("single_word", false);
  t.special = json.value("special", false);
  return t;
}

struct TokenizerJson::DecodeStep {
  enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind;
  std::string from, to;     // kReplace; kMetaspace: from = replacement
  std::string content;      // kStrip: the character stripped
  int start = 0, stop = 0;  // kStrip
  bool strip_first = true;  // kMetaspace: drop the first token's leading space
};

namespace {

using DecodeStep = TokenizerJson::DecodeStep;

absl::Status ParseDecoder(const Json& json,
                          std::vector<std::shared_ptr<const DecodeStep>>* out) {
  if (json.is_null()) return absl::OkStatus();
  const std::string type = json.value("type", "");
  if (type == "Sequence") {
    for (const Json& child : json.value("decoders", Json::array())) {
      RETURN_IF_ERROR(ParseDecoder(child, out));
    }
    return absl::OkStatus();
  }
  auto step = std::make_shared<DecodeStep>();
  if (type == "ByteLevel") {
    step->kind = DecodeStep::kByteLevel;
  } else if (type == "Replace") {
    step->kind = DecodeStep::kReplace;
    const Json pattern = json.value("pattern", Json::object());
    if (!pattern.contains("String")) {
      return absl::InvalidArgumentError(
          "tokenizer.json: a Replace decoder needs a String pattern");
    }
    step->from = pattern["String"].get<std::string>();
    step->to = json.value("content", "");
  } else if (type == "ByteFallback") {
    step->kind = DecodeStep::kByteFallback;
  } else if (type == "Fuse") {
    step->kind = DecodeStep::kFuse;
  } else if (type == "Strip") {
    step->kind = DecodeStep::kStrip;
    step->content = json.value("content", " ");
    for (const auto& [key, field] :
         {std::pair{"start", &step->start}, std::pair{"stop", &step->stop}}) {
      const Json value = json.value(key, Json(0));
      // A count of characters stripped: a small non-negative integer (a
      // double such as 2.7e80 would not even convert to int).
      if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
          value.get<int64_t>() > 1024) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tokenizer.json: a Strip decoder's \"", key,
            "\" must be an integer from 0 to 1024, not ", value.dump()));
      }
      *field = static_cast<int>(value.get<int64_t>());
    }
  } else if (type == "Metaspace") {
    step->kind = DecodeStep::kMetaspace;
    step->from = json.value("replacement", "\xE2\x96\x81");
    step->strip_first = json.contains("prepend_scheme")
                            ? json["prepend_scheme"] != "never"
                            : json.value("add_prefix_space", true);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.json: decoder type \"", type, "\" is not supported"));
  }
  out->push_back(std::move(step));
  return absl::OkStatus();
}

// The byte of a "<0xXX>" token, or -1.
int FallbackByte(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') {
    return -1;
  }
  try {
    size_t used = 0;
    const int b = std::stoi(token.substr(3, 2), &used, 16);
    return used == 2 ? b : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

std::vector<std::string> RunStep(const DecodeStep& step,
                                 std::vector<std::string> tokens) {
  std::vector<std::string> out;
  switch (step.kind) {
    case DecodeStep::kByteLevel: {
      std::string bytes;
      for (const std::string& t : tokens) {
        std::string mapped;
        bool all_mapped = true;
        int32_t i = 0;
        const int32_t n = static_cast<int32_t>(t.size());
        while (i < n && all_mapped) {
          UChar32 c;
          U8_NEXT(t.data(), i, n, c);
          const int b = c < 0 ? -1 : ByteLevelByte(static_cast<char32_t>(c));
          if (b < 0) all_mapped = false;
          mapped += static_cast<char>(b);
        }
        bytes += all_mapped ? mapped : t;
      }
      out.push_back(ToValidUtf8(bytes));
      break;
    }
    case DecodeStep::kReplace:
      for (const std::string& t : tokens) {
        out.push_back(absl::StrReplaceAll(t, {{step.from, step.to}}));
      }
      break;
    case DecodeStep::kByteFallback: {
      std::string pending;
      auto flush = [&] {
        if (pending.empty()) return;
        if (ToValidUtf8(pending) == pending) {
          out.push_back(pending);
        } else {
          for (size_t i = 0; i < pending.size(); ++i) {
            out.push_back("\xEF\xBF\xBD");
          }
        }
        pending.clear();
      };
      for (const std::string& t : tokens) {
        const int b = FallbackByte(t);
        if (b >= 0) {
          pending += static_cast<char>(b);
        } else {
          flush();
          out.push_back(t);
        }
      }
      flush();
      break;
    }
    case DecodeStep::kFuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      out.push_back(std::move(all));
      break;
    }
    case DecodeStep::kStrip:
      for (std::string t : tokens) {
        const size_t c = step.content.size();
        for (int i = 0; i < step.start && t.compare(0, c, step.content) == 0;
             ++i) {
          t.erase(0, c);
        }
        for (int i = 0; i < step.stop && t.size() >= c &&
                        t.compare(t.size() - c, c, step.content) == 0;
             ++i) {
          t.erase(t.size() - c);
        }
        out.push_back(std::move(t));
      }
      break;
    case DecodeStep::kMetaspace:
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::string t = absl::StrReplaceAll(tokens[i], {{step.from, " "}});
        if (i == 0 && step.strip_first && !t.empty() && t[0] == ' ') {
          t.erase(0, 1);
        }
        out.push_back(std::move(t));
      }
      break;
  }
  return out;
}

// Adds what the post-processor `p` puts around a single sequence to *out.
absl::Status ParsePostProcessor(const Json& p, SpecialTokens* out) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = p.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "Sequence") {
    for (const Json& step : p.value("processors", Json::array())) {
      RETURN_IF_ERROR(ParsePostProcessor(step, out));
    }
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return absl::InvalidArgumentError(
        absl::StrCat("post_processor type \"", type,
                     "\" is not supported (supported: TemplateProcessing, "
                     "ByteLevel, Sequence)"));
  }
  const Json specials = p.value("special_tokens", Json::object());
  bool after_text = false;
  for (const Json& piece : p.value("single", Json::array())) {
    if (piece.contains("Sequence")) {
      after_text = true;
      continue;
    }
    const std::string name = piece.at("SpecialToken").at("id");
    auto special = specials.find(name);
    if (special == specials.end() || !special->contains("ids")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "post_processor: special token \"", name, "\" has no ids"));
    }
    for (const Json& id : special->at("ids")) {
      const int64_t value = id.get<int64_t>();
      if (value < 0 || value >= kMaxTokenIds) {
        return absl::InvalidArgumentError(
            absl::StrCat("post_processor: special token \"", name,
                         "\" has an id outside [0, ", kMaxTokenIds, ")"));
      }
      (after_text ? out->suffix : out->prefix)
          .push_back(static_cast<int32_t>(value));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerJson>> TokenizerJson::Load(
    const std::string& path) {
  ASSIGN_OR_RETURN(Json json, ReadJsonFile(path));
  // nlohmann::json throws when a field has the wrong type (a number where a
  // string belongs); no exception leaves the loader.
  try {
    return FromJson(json, path);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a field has the wrong type: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<TokenizerJson>> TokenizerJson::FromJson(
    const Json& json, const std::string& path) {
  auto where = [&](absl::Status s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an object"));
  }
  auto out = std::unique_ptr<TokenizerJson>(new TokenizerJson());
  absl::StatusOr<Normalizer> normalizer =
      Normalizer::FromJson(json.value("normalizer", Json()));
  if (!normalizer.ok()) return where(normalizer.status());
  out->normalizer_ = *std::move(normalizer);
  absl::StatusOr<PreTokenizer> pre =
      PreTokenizer::FromJson(json.value("pre_tokenizer", Json()));
  if (!pre.ok()) return where(pre.status());
  out->pre_tokenizer_ = *std::move(pre);
  absl::StatusOr<std::unique_ptr<BpeModel>> model =
      BpeModel::FromJson(json.value("model", Json()));
  if (!model.ok()) return where(model.status());
  out->model_ = *std::move(model);
  absl::Status decoder =
      ParseDecoder(json.value("decoder", Json()), &out->decoder_);
  if (!decoder.ok()) return where(decoder);
  const Json added = json.value("added_tokens", Json::array());
  if (!added.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"added_tokens\" must be a list"));
  }
  for (const Json& t : added) {
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
        t["id"].get<int64_t>() < 0 || t["id"].get<int64_t>() >= kMaxTokenIds ||
        t.value("content", "").empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": each of \"added_tokens\" needs an id below ",
                       kMaxTokenIds, " and a content"));
    }
    out->added_.push_back(AddedTokenFromJson(t, t["id"].get<int32_t>()));
  }
  SpecialTokens special;
  absl::Status post =
      ParsePostProcessor(json.value("post_processor", Json()), &special);
  if (post.ok()) {
    out->post_processor_ = std::move(special);
  } else {
    out->post_processor_ = where(post);
  }
  return out;
}

absl::Status TokenizerJson::EncodeSegment(
    std::string_view text, size_t offset, std::vector<int32_t>* ids,
    std::vector<std::pair<size_t, size_t>>* ranges) const {
  AlignedText normalized = normalizer_.Apply(AlignedText::Of(text, offset));
  std::vector<BpeToken> tokens;
  for (const AlignedText& piece :
       pre_tokenizer_.Apply(std::move(normalized), offset == 0)) {
    tokens.clear();
    RETURN_IF_ERROR(
        model_->Tokenize(piece.text, pre_tokenizer_.byte_level(), &tokens));
    for (const BpeToken& t : tokens) {
      ids->push_back(t.id);
      ranges->emplace_back(piece.source[t.begin].first,
                           piece.source[t.end - 1].second);
    }
  }
  return absl::OkStatus();
}

std::string TokenizerJson::Decode(
    const std::vector<std::string>& tokens) const {
  std::vector<std::string> parts = tokens;
  for (const auto& step : decoder_) parts = RunStep(*step, std::move(parts));
  std::string out;
  for (const std::string& p : parts) out += p;
  return ToValidUtf8(out);
}

}  // namespace lathe::engine
