#include "server/grpc_auth.h"

#include "common/tls.h"

namespace lathe {

std::optional<absl::string_view> AuthorizationOf(
    const grpc::ServerContextBase& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return std::nullopt;
  return absl::string_view(it->second.data(), it->second.size());
}

absl::StatusOr<Caller> UserOf(const Authenticator& auth,
                              const grpc::ServerContextBase& context) {
  return auth.User(AuthorizationOf(context));
}

absl::StatusOr<WorkerCaller> WorkerOf(const Authenticator& auth,
                                      const grpc::ServerContextBase& context) {
  bool verified = context.auth_context() != nullptr &&
                  PeerHasVerifiedCertificate(*context.auth_context());
  return auth.Worker(AuthorizationOf(context), verified);
}

}  // namespace lathe
