#include "server/jsonl_validator.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace lathe {
namespace {

using nlohmann::json;

absl::Status LineError(int64_t line, absl::string_view field,
                       absl::string_view what) {
  return absl::InvalidArgumentError(
      field.empty() ? absl::StrCat("line ", line, ": ", what)
                    : absl::StrCat("line ", line, ": ", field, ": ", what));
}

}  // namespace

absl::StatusOr<std::string> JsonlValidator::CheckLine(absl::string_view line,
                                                      int64_t n) {
  json doc = json::parse(line.data(), line.data() + line.size(), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return LineError(n, "", "not valid JSON (or not valid UTF-8)");
  }
  if (!doc.is_object()) return LineError(n, "", "expected a JSON object");
  auto it = doc.find("messages");
  if (it == doc.end()) {
    auto prompt = doc.find("prompt");
    auto completion = doc.find("completion");
    if (prompt != doc.end() || completion != doc.end()) {
      if (prompt == doc.end() || !prompt->is_string()) {
        return LineError(n, "prompt", "missing or not a string");
      }
      if (completion == doc.end() || !completion->is_string()) {
        return LineError(n, "completion", "missing or not a string");
      }
      if (completion->get_ref<const std::string&>().empty()) {
        return LineError(n, "completion", "empty (nothing to learn)");
      }
      return std::string("prompt_completion");
    }
    auto text = doc.find("text");
    if (text != doc.end()) {
      if (!text->is_string() || text->get_ref<const std::string&>().empty()) {
        return LineError(n, "text", "must be a non-empty string");
      }
      return std::string("text");
    }
    return LineError(n, "messages",
                     "missing (expected the OpenAI chat format "
                     "{\"messages\": [{\"role\": …, \"content\": …}, …]}, "
                     "or {\"prompt\", \"completion\"}, or {\"text\"})");
  }
  if (!it->is_array() || it->empty()) {
    return LineError(n, "messages", "expected a non-empty array");
  }
  bool has_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    std::string field = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return LineError(n, field, "expected an object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return LineError(n, field + ".role", "missing or not a string");
    }
    const std::string& r = role->get_ref<const std::string&>();
    if (r != "system" && r != "user" && r != "assistant") {
      return LineError(n, field + ".role",
                       absl::StrCat("unknown role \"", r,
                                    "\" (expected system, user or assistant)"));
    }
    auto content = m.find("content");
    if (content == m.end() || !content->is_string()) {
      return LineError(n, field + ".content", "missing or not a string");
    }
    auto weight = m.find("weight");
    if (weight != m.end()) {
      if (r != "assistant") {
        return LineError(n, field + ".weight",
                         "only assistant messages take a weight");
      }
      if (!weight->is_number_integer() ||
          (weight->get<int64_t>() != 0 && weight->get<int64_t>() != 1)) {
        return LineError(n, field + ".weight", "must be 0 or 1");
      }
    }
    if (r == "assistant") {
      bool trained = weight == m.end() || weight->get<int64_t>() == 1;
      const auto& text = content->get_ref<const std::string&>();
      if (trained && text.empty()) {
        return LineError(n, field + ".content",
                         "empty assistant message (nothing to learn)");
      }
      has_assistant = has_assistant || (trained && !text.empty());
    }
  }
  if (!has_assistant) {
    return LineError(n, "messages",
                     "no assistant message with weight 1 (nothing to learn)");
  }
  return std::string("chat");
}

absl::Status JsonlValidator::EndLine() {
  ++line_number_;
  absl::string_view line = absl::StripAsciiWhitespace(line_);
  if (!line.empty()) {
    auto format = CheckLine(line, line_number_);
    error_ = format.status();
    if (error_.ok() && format_.empty()) {
      format_ = *format;
      format_line_ = line_number_;
    } else if (error_.ok() && *format != format_) {
      error_ = absl::InvalidArgumentError(absl::StrCat(
          "line ", line_number_, ": mixed formats: this line is ", *format,
          " but line ", format_line_, " is ", format_, " (one format per file)"));
    }
    if (error_.ok() && ++examples_ > limits_.max_examples) {
      error_ = absl::ResourceExhaustedError(absl::StrCat(
          "line ", line_number_, ": more than ", limits_.max_examples,
          " examples (max_examples_per_file)"));
    }
  }
  line_.clear();
  return error_;
}

absl::Status JsonlValidator::Feed(absl::string_view data) {
  if (!error_.ok()) return error_;
  while (!data.empty()) {
    size_t nl = data.find('\n');
    absl::string_view part = data.substr(0, nl);
    if (static_cast<int64_t>(line_.size() + part.size()) >
        limits_.max_line_bytes) {
      error_ = absl::ResourceExhaustedError(
          absl::StrCat("line ", line_number_ + 1, ": longer than ",
                       limits_.max_line_bytes, " bytes (max_line_bytes)"));
      return error_;
    }
    line_.append(part.data(), part.size());
    if (nl == absl::string_view::npos) break;
    if (!EndLine().ok()) return error_;
    data.remove_prefix(nl + 1);
  }
  return absl::OkStatus();
}

absl::Status JsonlValidator::Finish() {
  if (!error_.ok()) return error_;
  if (!line_.empty() && !EndLine().ok()) return error_;
  if (examples_ == 0) {
    return absl::InvalidArgumentError("file: no examples (the file is empty)");
  }
  return absl::OkStatus();
}

}  // namespace lathe
