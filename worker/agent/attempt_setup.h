// The engine side of an assigned attempt: the RunSpec the agent runs it
// with, and the JobError its failure is reported as. No I/O.
//
// A job's owner sees the error, so it names the job's own things (its file
// ids, its hyperparameters) and never the worker's: a data error reads
// "training_file file-abc: line 2: messages[1]: field \"content\" must be a
// string", not ".../attempt-1/train.jsonl:2: ...".
#ifndef LATHE_WORKER_AGENT_ATTEMPT_SETUP_H_
#define LATHE_WORKER_AGENT_ATTEMPT_SETUP_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lathe/v1/worker.pb.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::worker {

// The run spec for `assignment`: its job's settings (RunSpecForJob, whose
// errors it returns), with its files in `dir` (the attempt's folder):
// data.training_file dir/train.jsonl, data.validation_file dir/valid.jsonl
// when the job has one, checkpoint.resume_from dir/resume when it resumes,
// the result and checkpoints under dir, and the worker's `device`
// ("auto", "cpu", "cuda"). Errors name the files by the job's file ids
// ("training_file file-abc"). model.dir is the caller's to set.
absl::StatusOr<engine::RunSpec> RunSpecFor(const v1::Assignment& assignment,
                                           const std::string& dir,
                                           const std::string& device = "auto");

// The error a failed engine::Train (`status`: not OK, CANCELLED or ABORTED)
// is reported as, by the kind the engine marked it with (the one place
// kinds become job errors):
//   user data     invalid_training_file / invalid_validation_file, param
//                 that field, the engine's message (file id and line)
//   user options  nan_loss (param learning_rate_multiplier), out_of_memory
//                 (param batch_size), else invalid_hyperparameters
//   model         invalid_base_model, param model, a platform fault
//   platform      training_error, a platform fault
// Platform and model errors' details (paths of the worker, of the model)
// stay in the worker's log.
v1::JobError JobErrorFor(const absl::Status& status);

}  // namespace lathe::worker

#endif  // LATHE_WORKER_AGENT_ATTEMPT_SETUP_H_
