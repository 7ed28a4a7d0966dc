// The one place absl::Status and grpc::Status are converted.
#ifndef LATHE_COMMON_GRPC_STATUS_H_
#define LATHE_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "google/rpc/status.pb.h"

namespace lathe {

// Keeps the code and the message, and adds the standard rich error details
// (google.rpc.Status in the grpc-status-details-bin trailer) so clients
// need not parse the text:
// - ErrorInfo{reason, domain "lathe.v1", metadata}: reason is a stable
//   upper-case code (INVALID_FIELD, INVALID_LINE, LIMIT_EXCEEDED,
//   NOT_FOUND, ...); metadata names the field, the line and the limit
//   when the message does;
// - BadRequest{field_violations} for INVALID_ARGUMENT and
//   RESOURCE_EXHAUSTED naming a field.
// Messages name what they are about the one way the tree writes them:
// "field: what", "line N: field: what" or "line N: what"; a limit is
// named by its flag (max_...).
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The rich details ToGrpcStatus attaches, for tests and clients; false if
// the status carries none (or they do not parse).
bool ParseErrorDetails(const grpc::Status& status, google::rpc::Status* out);

}  // namespace lathe

#endif  // LATHE_COMMON_GRPC_STATUS_H_
