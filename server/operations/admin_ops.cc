#include "server/operations/admin_ops.h"

#include "common/status_macros.h"
#include "server/request_limits.h"
#include "spdlog/spdlog.h"

namespace lathe {

absl::StatusOr<v1::ApiKey> AdminOps::CreateApiKey(
    const Caller& caller, const v1::CreateApiKeyRequest& r) const {
  RETURN_IF_ERROR(CheckAdmin(caller));
  ASSIGN_OR_RETURN(
      v1::ApiKey key,
      lathe::CreateApiKey(*deps_.store, r.project(), r.role(), r.name()));
  spdlog::info("{} created API key {} for project {} ({})", caller.key_id,
               key.id(), key.project(), key.role());
  return key;
}

absl::StatusOr<v1::ListApiKeysResponse> AdminOps::ListApiKeys(
    const Caller& caller, const v1::ListApiKeysRequest& r) const {
  RETURN_IF_ERROR(CheckAdmin(caller));
  RETURN_IF_ERROR(CheckIdField("project", r.project(), /*required=*/false));
  ASSIGN_OR_RETURN(auto keys, deps_.store->ListApiKeys(r.project()));
  v1::ListApiKeysResponse out;
  for (auto& k : keys) *out.add_data() = std::move(k);
  return out;
}

absl::StatusOr<v1::ApiKey> AdminOps::RevokeApiKey(
    const Caller& caller, const v1::RevokeApiKeyRequest& r) const {
  RETURN_IF_ERROR(CheckAdmin(caller));
  RETURN_IF_ERROR(CheckIdField("key_id", r.key_id()));
  ASSIGN_OR_RETURN(v1::ApiKey key, deps_.store->RevokeApiKey(r.key_id()));
  spdlog::info("{} revoked API key {}", caller.key_id, key.id());
  return key;
}

}  // namespace lathe
