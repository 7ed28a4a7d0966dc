#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/model_inspect.h"
#include "server/services.h"
#include "spdlog/spdlog.h"

namespace lathe {

absl::StatusOr<v1::Model> RegisterBaseModel(store::Store& store,
                                            const std::string& name,
                                            const std::string& path) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError("name: must be 1..128 characters");
  }
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' &&
        c != '.') {
      return absl::InvalidArgumentError(
          "name: only letters, digits, '.', '-' and '_' are allowed");
    }
  }
  if (name.rfind("ft:", 0) == 0 || name == "." || name == "..") {
    return absl::InvalidArgumentError("name: reserved");
  }
  ASSIGN_OR_RETURN(v1::Model model, InspectModelFolder(path));
  model.set_id(name);
  return store.RegisterModel(model);
}

grpc::Status ModelsService::RegisterModel(grpc::ServerContext*,
                                          const v1::RegisterModelRequest* request,
                                          v1::Model* response) {
  auto m = RegisterBaseModel(*ctx_.store, request->name(), request->path());
  if (!m.ok()) return ToGrpcStatus(m.status());
  spdlog::info("registered base model {} ({})", m->id(), m->path());
  *response = *std::move(m);
  return grpc::Status::OK;
}

grpc::Status ModelsService::GetModel(grpc::ServerContext*,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) {
  auto m = ctx_.store->GetModel(request->model_id());
  if (!m.ok()) return ToGrpcStatus(m.status());
  *response = *std::move(m);
  return grpc::Status::OK;
}

grpc::Status ModelsService::ListModels(grpc::ServerContext*,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* response) {
  auto all = ctx_.store->ListModels();
  if (!all.ok()) return ToGrpcStatus(all.status());
  for (auto& m : *all) *response->add_data() = std::move(m);
  return grpc::Status::OK;
}

}  // namespace lathe
