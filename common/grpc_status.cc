#include "common/grpc_status.h"

#include <string>

#include "common/status_subject.h"
#include "google/rpc/error_details.pb.h"

namespace lathe {

// absl::StatusCode and grpc::StatusCode share their numbering (both follow
// google.rpc.Code), so the conversion keeps the code and the message.
grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const std::string message(status.message());
  StatusSubject s = SubjectOf(message);
  google::rpc::Status rich;
  rich.set_code(static_cast<int>(status.code()));
  rich.set_message(message);
  google::rpc::ErrorInfo info;
  info.set_reason(ErrorReason(status.code(), s));
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
