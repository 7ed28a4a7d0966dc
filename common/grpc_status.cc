#include "common/grpc_status.h"

#include <regex>
#include <string>

#include "google/rpc/error_details.pb.h"

namespace lathe {
namespace {

// What a message says it is about.
struct Subject {
  std::string field;        // "lora.alpha", "messages[1].role"; "" if none
  std::string line;         // "2" for "line 2: ..."; "" if none
  std::string limit;        // "max_line_bytes"; "" if none
  std::string description;  // the rest of the message
};

Subject SubjectOf(const std::string& message) {
  static const std::regex kLine(R"(^line (\d+): (.*)$)");
  static const std::regex kField(
      R"(^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]{0,64}\])*): (.*)$)");
  static const std::regex kLimit(R"(\b(max_[a-z_]+)\b)");
  Subject s;
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

std::string Reason(absl::StatusCode code, const Subject& s) {
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

}  // namespace

// absl::StatusCode and grpc::StatusCode share their numbering (both follow
// google.rpc.Code), so the conversion keeps the code and the message.
grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const std::string message(status.message());
  Subject s = SubjectOf(message);
  google::rpc::Status rich;
  rich.set_code(static_cast<int>(status.code()));
  rich.set_message(message);
  google::rpc::ErrorInfo info;
  info.set_reason(Reason(status.code(), s));
  info.set_domain("lathe.v1");
  if (!s.field.empty()) (*info.mutable_metadata())["field"] = s.field;
  if (!s.line.empty()) (*info.mutable_metadata())["line"] = s.line;
  if (!s.limit.empty()) (*info.mutable_metadata())["limit"] = s.limit;
  rich.add_details()->PackFrom(info);
  if ((status.code() == absl::StatusCode::kInvalidArgument ||
       status.code() == absl::StatusCode::kResourceExhausted) &&
      (!s.field.empty() || !s.line.empty())) {
    google::rpc::BadRequest bad;
    auto* v = bad.add_field_violations();
    v->set_field(s.line.empty()    ? s.field
                 : s.field.empty() ? "line " + s.line
                                   : "line " + s.line + ": " + s.field);
    v->set_description(s.description);
    rich.add_details()->PackFrom(bad);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message,
                      rich.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

bool ParseErrorDetails(const grpc::Status& status, google::rpc::Status* out) {
  return !status.error_details().empty() &&
         out->ParseFromString(status.error_details());
}

}  // namespace lathe
