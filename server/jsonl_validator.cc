#include "server/jsonl_validator.h"

#include "absl/strings/str_cat.h"

namespace lathe {

absl::Status JsonlValidator::EndLine() {
  ++line_number_;
  if (!IsBlankDataLine(line_)) {
    absl::StatusOr<DataFormat> format = CheckDataLine(line_);
    error_ =
        format.ok() ? file_format_.Add(*format, line_number_) : format.status();
    if (!error_.ok()) {
      error_ = absl::InvalidArgumentError(
          absl::StrCat("line ", line_number_, ": ", error_.message()));
    } else if (++examples_ > limits_.max_examples) {
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
