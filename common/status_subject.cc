#include "common/status_subject.h"

#include <regex>

namespace lathe {

StatusSubject SubjectOf(const std::string& message) {
  static const std::regex kLine(R"(^line (\d+): (.*)$)");
  static const std::regex kField(
      R"(^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]{0,64}\])*): (.*)$)");
  static const std::regex kLimit(R"(\b(max_[a-z_]+)\b)");
  StatusSubject s;
  std::string rest = message;
  std::smatch m;
  if (std::regex_match(rest, m, kLine)) {
    s.line = m[1];
    rest = m[2];
  }
  if (std::regex_match(rest, m, kField)) {
    s.field = m[1];
    rest = m[2];
  }
  if (std::regex_search(message, m, kLimit)) s.limit = m[1];
  s.description = rest;
  return s;
}

std::string ErrorReason(absl::StatusCode code, const StatusSubject& s) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
      return !s.line.empty()    ? "INVALID_LINE"
             : !s.field.empty() ? "INVALID_FIELD"
                                : "INVALID_ARGUMENT";
    case absl::StatusCode::kResourceExhausted:
      return s.limit.empty() ? "RESOURCE_EXHAUSTED" : "LIMIT_EXCEEDED";
    case absl::StatusCode::kFailedPrecondition:
      return "WRONG_STATE";
    default:
      return absl::StatusCodeToString(code);  // "NOT_FOUND", ...
  }
}

}  // namespace lathe
