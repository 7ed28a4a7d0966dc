#include "worker/agent/attempt_setup.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/agent/job_options.h"

namespace lathe::worker {

absl::StatusOr<engine::TrainOptions> TrainOptionsFor(const v1::Assignment& as,
                                                     const std::string& dir) {
  namespace fs = std::filesystem;
  const v1::Job& job = as.job();
  ASSIGN_OR_RETURN(engine::TrainOptions o, TrainOptionsForJob(job));
  o.training_file = (fs::path(dir) / "train.jsonl").string();
  o.training_file_name = absl::StrCat("training_file ", job.training_file());
  if (!job.validation_file().empty()) {
    o.validation_file = (fs::path(dir) / "valid.jsonl").string();
    o.validation_file_name =
        absl::StrCat("validation_file ", job.validation_file());
  }
  if (as.has_resume_from()) o.resume_from = (fs::path(dir) / "resume").string();
  o.output_dir = (fs::path(dir) / "adapter").string();
  o.checkpoint_dir = (fs::path(dir) / "checkpoints").string();
  return o;
}

v1::JobError JobErrorFor(const absl::Status& status) {
  v1::JobError error;
  error.set_message(std::string(status.message()));
  error.set_user_fault(true);
  const std::string field = engine::DataErrorField(status);
  if (absl::IsInvalidArgument(status) && !field.empty()) {
    error.set_code(absl::StrCat("invalid_", field));
    error.set_param(field);
  } else if (absl::IsOutOfRange(status)) {
    error.set_code("nan_loss");
    error.set_param(
        "method.supervised.hyperparameters.learning_rate_multiplier");
  } else if (absl::IsResourceExhausted(status)) {
    error.set_code("out_of_memory");
    error.set_param("method.supervised.hyperparameters.batch_size");
  } else {
    error.set_code("training_error");
    error.set_user_fault(false);
    error.set_message(absl::StrCat("training failed on the worker (",
                                   absl::StatusCodeToString(status.code()),
                                   "); the worker's log holds the details"));
  }
  return error;
}

}  // namespace lathe::worker
