// The Admin operations: API keys, created, listed and revoked with an
// admin key (PERMISSION_DENIED otherwise).
//
// Thread-safe.
#ifndef LATHE_SERVER_OPERATIONS_ADMIN_OPS_H_
#define LATHE_SERVER_OPERATIONS_ADMIN_OPS_H_

#include "absl/status/statusor.h"
#include "lathe/v1/admin.pb.h"
#include "server/auth.h"
#include "server/operations/deps.h"

namespace lathe {

class AdminOps {
 public:
  // What `deps` points to must outlive this.
  explicit AdminOps(const OperationDeps& deps) : deps_(deps) {}

  // The key with its secret (shown once). INVALID_ARGUMENT for a bad
  // project name or role.
  absl::StatusOr<v1::ApiKey> CreateApiKey(
      const Caller& caller, const v1::CreateApiKeyRequest& request) const;
  absl::StatusOr<v1::ListApiKeysResponse> ListApiKeys(
      const Caller& caller, const v1::ListApiKeysRequest& request) const;
  // Effective at once, open streams included. NOT_FOUND if absent.
  absl::StatusOr<v1::ApiKey> RevokeApiKey(
      const Caller& caller, const v1::RevokeApiKeyRequest& request) const;

 private:
  const OperationDeps deps_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_ADMIN_OPS_H_
