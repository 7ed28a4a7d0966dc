#include "server/auth.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/request_limits.h"

namespace lathe {
namespace {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

absl::Status WriteSecretFile(const std::string& path, const std::string& secret) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", path));
  std::string line = secret + "\n";
  bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string secret(absl::StripAsciiWhitespace(ss.str()));
  if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " is empty"));
  return secret;
}

}  // namespace

absl::StatusOr<std::string> BearerToken(
    std::optional<absl::string_view> authorization) {
  if (!authorization) {
    return absl::UnauthenticatedError(
        "no API key: send `authorization: Bearer <key>` (lathe --api_key or "
        "$LATHE_API_KEY)");
  }
  absl::string_view value = *authorization;
  if (!absl::ConsumePrefix(&value, "Bearer ") || value.empty()) {
    return absl::UnauthenticatedError(
        "authorization: expected \"Bearer <key>\"");
  }
  return std::string(value);
}

absl::StatusOr<Caller> Authenticator::User(
    std::optional<absl::string_view> authorization) const {
  ASSIGN_OR_RETURN(std::string token, BearerToken(authorization));
  return UserWithKey(token);
}

namespace {

absl::StatusOr<Caller> CallerOf(const absl::StatusOr<v1::ApiKey>& key) {
  if (!key.ok()) {
    if (absl::IsNotFound(key.status())) {
      return absl::UnauthenticatedError("unknown API key");
    }
    return key.status();
  }
  if (key->revoked_at() != 0) {
    return absl::UnauthenticatedError(
        absl::StrCat("API key ", key->id(), " was revoked"));
  }
  return Caller{key->project(), key->role() == "admin", key->id()};
}

}  // namespace

absl::StatusOr<Caller> Authenticator::UserWithKey(
    absl::string_view api_key) const {
  return CallerOf(store_.FindApiKey(Sha256Hex(api_key)));
}

absl::Status Authenticator::Recheck(const Caller& caller) const {
  return CallerOf(store_.GetApiKey(caller.key_id)).status();
}

absl::StatusOr<WorkerCaller> Authenticator::Worker(
    std::optional<absl::string_view> authorization,
    bool verified_client_certificate) const {
  auto token = BearerToken(authorization);
  if (!token.ok() || !ConstantTimeEquals(*token, worker_token_)) {
    return absl::UnauthenticatedError(
        "the worker service needs the worker token (lathe-worker --token_file)");
  }
  if (require_worker_certificate_ && !verified_client_certificate) {
    return absl::UnauthenticatedError(
        "the worker service needs a client certificate signed by lathed's "
        "--worker_client_ca (lathe-worker --tls_cert/--tls_key)");
  }
  return WorkerCaller();
}

absl::Status CheckAdmin(const Caller& caller) {
  if (!caller.admin) {
    return absl::PermissionDeniedError("this call needs an admin API key");
  }
  return absl::OkStatus();
}

absl::Status CheckOwner(const Caller& caller, const std::string& owner,
                        absl::string_view what, absl::string_view id) {
  if (owner == caller.project) return absl::OkStatus();
  return NotFoundAs(what, id, absl::NotFoundError(""));
}

absl::StatusOr<v1::ApiKey> CreateApiKey(store::Store& store,
                                        const std::string& project,
                                        const std::string& role,
                                        const std::string& name) {
  if (project.empty() || project.size() > 64) {
    return absl::InvalidArgumentError("project: must be 1..64 characters");
  }
  for (char c : project) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' &&
        c != '_' && c != '.') {
      return absl::InvalidArgumentError(
          "project: only letters, digits, '.', '-' and '_' are allowed");
    }
  }
  std::string r = role.empty() ? "user" : role;
  if (r != "user" && r != "admin") {
    return absl::InvalidArgumentError("role: use \"user\" or \"admin\"");
  }
  if (name.size() > 128) return absl::InvalidArgumentError("name: longer than 128");
  v1::ApiKey key;
  key.set_id(NewId("key"));
  key.set_project(project);
  key.set_role(r);
  key.set_name(name);
  key.set_created_at(NowUnixSeconds());
  std::string secret = NewId("sk") + NewId("");  // ~286 bits
  RETURN_IF_ERROR(store.InsertApiKey(key, Sha256Hex(secret)));
  key.set_secret(secret);
  return key;
}

absl::Status EnsureAdminKey(store::Store& store, const std::string& path) {
  auto existing = ReadSecretFile(path);
  if (existing.ok()) {
    if (store.FindApiKey(Sha256Hex(*existing)).ok()) return absl::OkStatus();
    v1::ApiKey key;
    key.set_id(NewId("key"));
    key.set_project("admin");
    key.set_role("admin");
    key.set_name("bootstrap");
    key.set_created_at(NowUnixSeconds());
    return store.InsertApiKey(key, Sha256Hex(*existing));
  }
  ASSIGN_OR_RETURN(auto keys, store.ListApiKeys(""));
  for (const auto& k : keys) {
    if (k.role() == "admin" && k.revoked_at() == 0) return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(v1::ApiKey key, CreateApiKey(store, "admin", "admin", "bootstrap"));
  return WriteSecretFile(path, key.secret());
}

absl::StatusOr<std::string> LoadOrCreateSecret(const std::string& path,
                                               absl::string_view prefix) {
  auto existing = ReadSecretFile(path);
  if (existing.ok() || !absl::IsNotFound(existing.status())) return existing;
  std::string secret = NewId(prefix) + NewId("");
  RETURN_IF_ERROR(WriteSecretFile(path, secret));
  return secret;
}

}  // namespace lathe
