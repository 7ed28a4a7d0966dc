#include "server/grpc_adapter.h"
#include "server/grpc_auth.h"
#include "server/services.h"

namespace lathe {

grpc::Status ModelsService::RegisterModel(grpc::ServerContext* context,
                                          const v1::RegisterModelRequest* request,
                                          v1::Model* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->models.RegisterModel(c, *request);
      },
      response);
}

grpc::Status ModelsService::GetModel(grpc::ServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->models.GetModel(c, *request); },
      response);
}

grpc::Status ModelsService::ListModels(grpc::ServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->models.ListModels(c, *request);
      },
      response);
}

grpc::Status ModelsService::DeleteModel(grpc::ServerContext* context,
                                        const v1::DeleteModelRequest* request,
                                        v1::DeleteModelResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->models.DeleteModel(c, *request);
      },
      response);
}

}  // namespace lathe
