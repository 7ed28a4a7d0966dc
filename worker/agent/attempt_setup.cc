#include "worker/agent/attempt_setup.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "worker/engine/error_kind.h"
#include "common/status_macros.h"
#include "worker/agent/job_options.h"

namespace lathe::worker {

absl::StatusOr<engine::RunSpec> RunSpecFor(const v1::Assignment& as,
                                           const std::string& dir,
                                           const std::string& device) {
  namespace fs = std::filesystem;
  const v1::Job& job = as.job();
  ASSIGN_OR_RETURN(engine::RunSpec spec, RunSpecForJob(job));
  // A mixture's sources in place of training_file: their file ids become
  // the paths the agent fetches them to.
  auto place = [&](engine::MixtureSpec& mixture, const std::string& prefix) {
    for (size_t i = 0; i < mixture.sources.size(); ++i) {
      engine::MixtureSourceSpec& source = mixture.sources[i];
      source.file =
          (fs::path(dir) / absl::StrCat(prefix, "source-", i, ".jsonl")).string();
      if (!source.validation_file.empty()) {
        source.validation_file =
            (fs::path(dir) / absl::StrCat(prefix, "source-", i, "-valid.jsonl"))
                .string();
      }
    }
  };
  place(spec.data.mixture, "");
  for (size_t s = 0; s < spec.data.stages.size(); ++s) {
    place(spec.data.stages[s].mixture, absl::StrCat("stage-", s, "-"));
  }
  if (spec.data.mixture.sources.empty() && spec.data.stages.empty()) {
    spec.data.training_file = (fs::path(dir) / "train.jsonl").string();
    spec.data.training_file_name =
        absl::StrCat("training_file ", job.training_file());
  }
  if (!job.validation_file().empty()) {
    spec.data.validation_file = (fs::path(dir) / "valid.jsonl").string();
    spec.data.validation_file_name =
        absl::StrCat("validation_file ", job.validation_file());
  }
  if (!job.reports().general_file().empty()) {
    spec.evaluation.general_file = (fs::path(dir) / "general.jsonl").string();
    spec.evaluation.general_file_name =
        absl::StrCat("reports.general_file ", job.reports().general_file());
  }
  if (as.has_resume_from()) {
    spec.checkpoint.resume_from = (fs::path(dir) / "resume").string();
  }
  spec.output.dir = (fs::path(dir) / "adapter").string();
  spec.checkpoint.dir = (fs::path(dir) / "checkpoints").string();
  spec.device.device = device;
  return spec;
}

v1::JobError JobErrorFor(const absl::Status& status) {
  v1::JobError error;
  error.set_message(std::string(status.message()));
  error.set_param(engine::ErrorFieldOf(status));
  error.set_user_fault(true);
  switch (engine::ErrorKindOf(status)) {
    case engine::ErrorKind::kUserData:
      error.set_code(absl::StrCat("invalid_", error.param()));
      break;
    case engine::ErrorKind::kUserOptions:
      error.set_code(absl::IsOutOfRange(status)          ? "nan_loss"
                     : absl::IsResourceExhausted(status) ? "out_of_memory"
                                                         : "invalid_hyperparameters");
      break;
    case engine::ErrorKind::kModel:
      // The operator registered the model; the details (its paths on the
      // server and worker) stay in the worker's log.
      error.set_code("invalid_base_model");
      error.set_param("model");
      error.set_user_fault(false);
      error.set_message(
          "the base model's files could not be loaded (config, weights or "
          "tokenizer); an operator should check the registered folder: the "
          "worker's log holds the details");
      break;
    case engine::ErrorKind::kPlatform:
      error.set_code("training_error");
      error.clear_param();
      error.set_user_fault(false);
      error.set_message(absl::StrCat("training failed on the worker (",
                                     absl::StatusCodeToString(status.code()),
                                     "); the worker's log holds the details"));
      break;
  }
  return error;
}

}  // namespace lathe::worker
