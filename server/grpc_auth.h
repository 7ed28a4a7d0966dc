// Authentication for gRPC calls: reads what a call carries (its
// `authorization` metadata, its verified client certificate) and hands it to
// the transport-free Authenticator.
#ifndef LATHE_SERVER_GRPC_AUTH_H_
#define LATHE_SERVER_GRPC_AUTH_H_

#include <grpcpp/server_context.h>

#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth.h"

namespace lathe {

// The value of the call's `authorization` metadata; nullopt when it has
// none. Valid while `context` is.
std::optional<absl::string_view> AuthorizationOf(
    const grpc::ServerContextBase& context);

// Authenticator::User for a gRPC call.
absl::StatusOr<Caller> UserOf(const Authenticator& auth,
                              const grpc::ServerContextBase& context);
// Authenticator::Worker for a gRPC call: the certificate counts when the
// call's TLS layer verified it.
absl::StatusOr<WorkerCaller> WorkerOf(const Authenticator& auth,
                                      const grpc::ServerContextBase& context);

}  // namespace lathe

#endif  // LATHE_SERVER_GRPC_AUTH_H_
