#include "worker/agent/attempt_setup.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace lathe::worker {

engine::TrainOptions TrainOptionsFor(const v1::Assignment& as,
                                     const std::string& dir) {
  namespace fs = std::filesystem;
  const v1::Job& job = as.job();
  engine::TrainOptions o;
  o.base_model_name = job.model();
  o.training_file = (fs::path(dir) / "train.jsonl").string();
  o.training_file_name = absl::StrCat("training_file ", job.training_file());
  if (!job.validation_file().empty()) {
    o.validation_file = (fs::path(dir) / "valid.jsonl").string();
    o.validation_file_name =
        absl::StrCat("validation_file ", job.validation_file());
  }
  if (as.has_resume_from()) o.resume_from = (fs::path(dir) / "resume").string();
  o.output_dir = (fs::path(dir) / "adapter").string();
  const auto& hp = job.method().supervised().hyperparameters();
  o.n_epochs = hp.n_epochs();
  o.batch_size = hp.batch_size();
  o.learning_rate = as.learning_rate();
  o.seed = static_cast<uint64_t>(job.seed());
  o.lora.rank = job.lora().rank();
  o.lora.alpha = job.lora().alpha();
  o.lora.dropout = job.lora().dropout();
  o.lora.target_modules.assign(job.lora().target_modules().begin(),
                               job.lora().target_modules().end());
  o.checkpoint_every = as.checkpoint_every_steps();
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
