// The Models operations: register base models (admin keys only), read and
// list models. A project's key sees base models and its own fine-tuned
// ones, and never the server folder a base model lives in (Model.path).
//
// Thread-safe.
#ifndef LATHE_SERVER_OPERATIONS_MODEL_OPS_H_
#define LATHE_SERVER_OPERATIONS_MODEL_OPS_H_

#include <string>

#include "absl/status/statusor.h"
#include "lathe/v1/models.pb.h"
#include "server/auth.h"
#include "server/operations/deps.h"

namespace lathe {

class ModelOps {
 public:
  // What `deps` points to must outlive this.
  explicit ModelOps(const OperationDeps& deps) : deps_(deps) {}

  // PERMISSION_DENIED without an admin key; then as RegisterBaseModel.
  absl::StatusOr<v1::Model> RegisterModel(
      const Caller& caller, const v1::RegisterModelRequest& request) const;
  absl::StatusOr<v1::Model> GetModel(const Caller& caller,
                                     const v1::GetModelRequest& request) const;
  absl::StatusOr<v1::ListModelsResponse> ListModels(
      const Caller& caller, const v1::ListModelsRequest& request) const;
  // A fine-tuned model of the caller's project, with its adapter files
  // (Store::DeleteFineTunedModel; blobs no record names go). NOT_FOUND as
  // GetModel, PERMISSION_DENIED for a base model, FAILED_PRECONDITION while
  // an unfinished job uses it.
  absl::StatusOr<v1::DeleteModelResponse> DeleteModel(
      const Caller& caller, const v1::DeleteModelRequest& request) const;

 private:
  const OperationDeps deps_;
};

// Checks `name` and the folder at `path` and records the base model.
// INVALID_ARGUMENT / ALREADY_EXISTS as Models.RegisterModel.
absl::StatusOr<v1::Model> RegisterBaseModel(store::Store& store,
                                            const std::string& name,
                                            const std::string& path);

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_MODEL_OPS_H_
