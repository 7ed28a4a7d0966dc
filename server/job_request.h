// Checks a CreateJobRequest field by field and resolves every "auto" into the
// job that is stored, sent to the worker and shown to the user.
#ifndef LATHE_SERVER_JOB_REQUEST_H_
#define LATHE_SERVER_JOB_REQUEST_H_

#include <string>

#include "absl/status/statusor.h"
#include "lathe/v1/files.pb.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "lathe/v1/models.pb.h"

namespace lathe {

// Fields that need no lookup: method, hyperparameters, LoRA, suffix,
// metadata, devices (1..64; more than 1 only for supervised, dpo and orpo,
// and not more than a batch_size that is set). INVALID_ARGUMENT naming the
// field.
absl::Status CheckJobRequest(const v1::CreateJobRequest& request);

// LISA's activated_layers when the job sets none (LMFlow's default).
inline constexpr int32_t kDefaultLisaLayers = 2;

// The fields that need the base model: LISA's activated_layers (resolved)
// and every named layer within its layer count. INVALID_ARGUMENT naming the
// field. OK when the model's layer count is not known (the engine checks at
// setup). REQUIRES: CheckJobRequest(request).ok().
absl::Status CheckJobForModel(const v1::CreateJobRequest& request,
                              const v1::Model& model);

// The operator's settings that job resolution reads (lathed's flags).
struct JobDefaults {
  double base_learning_rate = 2e-4;  // x learning_rate_multiplier
  int checkpoint_every_steps = 100;  // when the job sets none
};

// Fills every setting of `job` left unset with its default: what ResolveJob
// does once the request's own values and the file-dependent batch size are
// in. Also brings a job stored by an older lathed (without the settings
// added since) up to what the worker now expects. A no-op on a resolved job.
void FillJobDefaults(v1::Job& job, const JobDefaults& defaults);

// The new job (status validating_files) of `project` with every auto
// resolved and its memory need estimated, given the training file's and the
// base model's metadata: the one place a job's defaults are written. The
// job is what runs: the worker reads every setting from it. devices auto is
// 1; an auto batch_size is at least devices. memory_bytes is each worker's
// need (a gang places devices workers of it).
// REQUIRES: CheckJobRequest(request).ok().
v1::Job ResolveJob(const v1::CreateJobRequest& request,
                   const v1::File& training_file, const v1::Model& model,
                   const std::string& project, const std::string& job_id,
                   int64_t seed_if_unset, const JobDefaults& defaults);

// The request's files fit its method: preference data for dpo and orpo,
// chat / prompt-completion / text data otherwise. INVALID_ARGUMENT naming
// training_file or validation_file. `validation` may be null (none).
absl::Status CheckJobFiles(const v1::CreateJobRequest& request,
                           const v1::File& training_file,
                           const v1::File* validation_file);

// SHA-256 of the request without its idempotency key: "same body".
std::string RequestFingerprint(const v1::CreateJobRequest& request);

}  // namespace lathe

#endif  // LATHE_SERVER_JOB_REQUEST_H_
