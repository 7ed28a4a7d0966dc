#include "server/operations/model_ops.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/status_macros.h"
#include "server/model_inspect.h"
#include "server/operations/file_ops.h"
#include "server/request_limits.h"
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
  if (path.size() > 4096)
    return absl::InvalidArgumentError("path: longer than 4096 bytes");
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

absl::StatusOr<v1::Model> ModelOps::RegisterModel(
    const Caller& caller, const v1::RegisterModelRequest& r) const {
  RETURN_IF_ERROR(CheckAdmin(caller));
  ASSIGN_OR_RETURN(v1::Model m,
                   RegisterBaseModel(*deps_.store, r.name(), r.path()));
  spdlog::info("registered base model {} ({})", m.id(), m.path());
  return m;
}

absl::StatusOr<v1::Model> ModelOps::GetModel(
    const Caller& caller, const v1::GetModelRequest& r) const {
  RETURN_IF_ERROR(CheckIdField("model_id", r.model_id()));
  auto m = deps_.store->GetModel(r.model_id());
  if (!m.ok()) return NotFoundAs("model", r.model_id(), m.status());
  if (m->kind() != "base") {
    // A fine-tuned model is its job's project's.
    ASSIGN_OR_RETURN(v1::Job job, deps_.store->GetJob(m->job_id()));
    RETURN_IF_ERROR(CheckOwner(caller, job.project(), "model", r.model_id()));
  }
  return ForCaller(caller, *std::move(m));
}

absl::StatusOr<v1::ListModelsResponse> ModelOps::ListModels(
    const Caller& caller, const v1::ListModelsRequest&) const {
  ASSIGN_OR_RETURN(auto all, deps_.store->ListModels(caller.project));
  v1::ListModelsResponse out;
  for (auto& m : all) *out.add_data() = ForCaller(caller, std::move(m));
  return out;
}

absl::StatusOr<v1::DeleteModelResponse> ModelOps::DeleteModel(
    const Caller& caller, const v1::DeleteModelRequest& r) const {
  v1::GetModelRequest get;
  get.set_model_id(r.model_id());
  ASSIGN_OR_RETURN(v1::Model m, GetModel(caller, get));
  if (m.kind() == "base") {
    return absl::PermissionDeniedError(absl::StrCat(
        "model_id: ", m.id(), " is a base model, which the operator "
        "registers (lathed --base_model); only fine-tuned models are deleted "
        "through the API"));
  }
  for (v1::JobStatus status :
       {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_QUEUED,
        v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_PAUSED,
        v1::JOB_STATUS_CANCELLING}) {
    ASSIGN_OR_RETURN(auto jobs, deps_.store->JobsInStatus(status));
    for (const v1::Job& job : jobs) {
      const auto& inputs = job.method().merge().inputs();
      if (job.model() == m.id() ||
          std::find(inputs.begin(), inputs.end(), m.id()) != inputs.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "model_id: job ", job.id(), " (not finished) uses ", m.id(),
            "; cancel it or wait for it to finish first"));
      }
    }
  }
  ASSIGN_OR_RETURN(std::vector<std::string> blobs,
                   deps_.store->DeleteFineTunedModel(m.job_id()));
  for (const std::string& sha : blobs) RemoveBlobIfUnreferenced(deps_, sha);
  spdlog::info("deleted fine-tuned model {} (job {}, {} file(s))", m.id(),
               m.job_id(), blobs.size());
  v1::DeleteModelResponse out;
  out.set_id(m.id());
  out.set_deleted(true);
  return out;
}

}  // namespace lathe
