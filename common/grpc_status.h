// The one place absl::Status and grpc::Status are converted.
#ifndef LATHE_COMMON_GRPC_STATUS_H_
#define LATHE_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lathe {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lathe

#endif  // LATHE_COMMON_GRPC_STATUS_H_
