// Who is calling: API keys (a project's users and operators) on the public
// services, a shared worker token on the worker service. A credential of one
// kind is refused by the other kind's services.
//
// Knows no transport: each one hands over what its call carries (the
// `authorization` header's value; whether its TLS layer verified a client
// certificate). server/grpc_auth.h reads them off a gRPC call.
//
// Thread-safe (the store is; the worker token is constant).
#ifndef LATHE_SERVER_AUTH_H_
#define LATHE_SERVER_AUTH_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lathe/v1/admin.pb.h"
#include "server/store/store.h"

namespace lathe {

// The holder of an API key, as Authenticator::User found it.
struct Caller {
  std::string project;  // the key's project
  bool admin = false;
  std::string key_id;
};

// A worker, as the worker token (and its certificate, when required)
// proved; only Authenticator::Worker makes one, so an operation that takes
// it cannot be reached unauthenticated.
class WorkerCaller {
 private:
  friend class Authenticator;
  WorkerCaller() = default;
};

class Authenticator {
 public:
  // `store` must outlive this.
  // `require_worker_certificate`: worker calls must also come over mutual
  // TLS with a client certificate the worker port verified.
  Authenticator(store::Store& store, std::string worker_token,
                bool require_worker_certificate = false)
      : store_(store),
        worker_token_(std::move(worker_token)),
        require_worker_certificate_(require_worker_certificate) {}

  // The caller of a public operation, from the value of its
  // `authorization` header ("Bearer <api key>"; nullopt when the call has
  // none). UNAUTHENTICATED when missing, malformed, unknown or revoked.
  absl::StatusOr<Caller> User(
      std::optional<absl::string_view> authorization) const;
  // The holder of `api_key` (the bearer string itself); as User.
  absl::StatusOr<Caller> UserWithKey(absl::string_view api_key) const;
  // For long calls: UNAUTHENTICATED once `caller`'s key is revoked.
  absl::Status Recheck(const Caller& caller) const;
  // A worker: UNAUTHENTICATED unless `authorization` carries the worker
  // token and, when required, `verified_client_certificate` is true.
  absl::StatusOr<WorkerCaller> Worker(
      std::optional<absl::string_view> authorization,
      bool verified_client_certificate) const;

 private:
  store::Store& store_;
  const std::string worker_token_;
  const bool require_worker_certificate_;
};

// The key in the value of an `authorization` header, "Bearer <key>".
// UNAUTHENTICATED, saying how to send one, when missing or malformed.
absl::StatusOr<std::string> BearerToken(
    std::optional<absl::string_view> authorization);

// PERMISSION_DENIED unless `caller` holds an admin key.
absl::Status CheckAdmin(const Caller& caller);

// NOT_FOUND (worded as for a missing id) unless `owner` is the caller's
// project: another project's ids must not be revealed to exist.
absl::Status CheckOwner(const Caller& caller, const std::string& owner,
                        absl::string_view what, absl::string_view id);

// Creates an API key; returns it with its secret (shown once).
// INVALID_ARGUMENT for a bad project name or role.
absl::StatusOr<v1::ApiKey> CreateApiKey(store::Store& store,
                                        const std::string& project,
                                        const std::string& role,
                                        const std::string& name);

// Makes sure an admin key exists: if none is stored, creates one and writes
// its secret to `path` (mode 0600). If `path` holds a secret the store does
// not know (a fresh database), registers it. Returns the file's path.
absl::Status EnsureAdminKey(store::Store& store, const std::string& path);

// Reads the worker token from `path`, creating a random one (0600) if the
// file does not exist.
absl::StatusOr<std::string> LoadOrCreateSecret(const std::string& path,
                                               absl::string_view prefix);

}  // namespace lathe

#endif  // LATHE_SERVER_AUTH_H_
