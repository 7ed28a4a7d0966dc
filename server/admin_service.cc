#include "server/grpc_adapter.h"
#include "server/grpc_auth.h"
#include "server/services.h"

namespace lathe {

grpc::Status AdminService::CreateApiKey(grpc::ServerContext* context,
                                        const v1::CreateApiKeyRequest* request,
                                        v1::ApiKey* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->admin.CreateApiKey(c, *request);
      },
      response);
}

grpc::Status AdminService::ListApiKeys(grpc::ServerContext* context,
                                       const v1::ListApiKeysRequest* request,
                                       v1::ListApiKeysResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->admin.ListApiKeys(c, *request);
      },
      response);
}

grpc::Status AdminService::RevokeApiKey(grpc::ServerContext* context,
                                        const v1::RevokeApiKeyRequest* request,
                                        v1::ApiKey* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->admin.RevokeApiKey(c, *request);
      },
      response);
}

}  // namespace lathe
