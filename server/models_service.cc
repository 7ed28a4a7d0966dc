#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/model_inspect.h"
#include "server/request_limits.h"
#include "server/services.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

// Where a base model lives on the server is the operators' business: a
// project key sees the model, not the server's folders.
v1::Model ForCaller(const Caller& caller, v1::Model model) {
  if (!caller.admin) model.clear_path();
  return model;
}

}  // namespace

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
  if (path.size() > 4096) return absl::InvalidArgumentError("path: longer than 4096 bytes");
  for (char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("path: \"", Echo(path), "\" holds a control character"));
    }
  }
  ASSIGN_OR_RETURN(v1::Model model, InspectModelFolder(path));
  model.set_id(name);
  return store.RegisterModel(model);
}

grpc::Status ModelsService::RegisterModel(grpc::ServerContext* context,
                                          const v1::RegisterModelRequest* request,
                                          v1::Model* response) {
  auto caller = ctx_.auth->Admin(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto m = RegisterBaseModel(*ctx_.store, request->name(), request->path());
  if (!m.ok()) return ToGrpcStatus(m.status());
  spdlog::info("registered base model {} ({})", m->id(), m->path());
  *response = *std::move(m);
  return grpc::Status::OK;
}

grpc::Status ModelsService::GetModel(grpc::ServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) {
  auto caller = ctx_.auth->User(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (auto st = CheckIdField("model_id", request->model_id()); !st.ok()) {
    return ToGrpcStatus(st);
  }
  auto m = ctx_.store->GetModel(request->model_id());
  if (!m.ok())
    return ToGrpcStatus(NotFoundAs("model", request->model_id(), m.status()));
  if (m->kind() != "base") {
    // A fine-tuned model is its job's project's.
    auto job = ctx_.store->GetJob(m->job_id());
    if (!job.ok()) return ToGrpcStatus(job.status());
    auto st = CheckOwner(*caller, job->project(), "model", request->model_id());
    if (!st.ok()) return ToGrpcStatus(st);
  }
  *response = ForCaller(*caller, *std::move(m));
  return grpc::Status::OK;
}

grpc::Status ModelsService::ListModels(grpc::ServerContext* context,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* response) {
  auto caller = ctx_.auth->User(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto all = ctx_.store->ListModels(caller->project);
  if (!all.ok()) return ToGrpcStatus(all.status());
  for (auto& m : *all) *response->add_data() = ForCaller(*caller, std::move(m));
  return grpc::Status::OK;
}

grpc::Status AdminService::CreateApiKey(grpc::ServerContext* context,
                                        const v1::CreateApiKeyRequest* request,
                                        v1::ApiKey* response) {
  auto caller = ctx_.auth->Admin(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto key = lathe::CreateApiKey(*ctx_.store, request->project(), request->role(),
                                 request->name());
  if (!key.ok()) return ToGrpcStatus(key.status());
  spdlog::info("{} created API key {} for project {} ({})", caller->key_id,
               key->id(), key->project(), key->role());
  *response = *std::move(key);
  return grpc::Status::OK;
}

grpc::Status AdminService::ListApiKeys(grpc::ServerContext* context,
                                       const v1::ListApiKeysRequest* request,
                                       v1::ListApiKeysResponse* response) {
  auto caller = ctx_.auth->Admin(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (auto st = CheckIdField("project", request->project(), /*required=*/false); !st.ok()) {
    return ToGrpcStatus(st);
  }
  auto keys = ctx_.store->ListApiKeys(request->project());
  if (!keys.ok()) return ToGrpcStatus(keys.status());
  for (auto& k : *keys) *response->add_data() = std::move(k);
  return grpc::Status::OK;
}

grpc::Status AdminService::RevokeApiKey(grpc::ServerContext* context,
                                        const v1::RevokeApiKeyRequest* request,
                                        v1::ApiKey* response) {
  auto caller = ctx_.auth->Admin(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (auto st = CheckIdField("key_id", request->key_id()); !st.ok()) return ToGrpcStatus(st);
  auto key = ctx_.store->RevokeApiKey(request->key_id());
  if (!key.ok()) return ToGrpcStatus(key.status());
  spdlog::info("{} revoked API key {}", caller->key_id, key->id());
  *response = *std::move(key);
  return grpc::Status::OK;
}

}  // namespace lathe
