// The one translation from the wire to the engine: a job as lathed resolved
// it (every default settled, see server/job_request.cc) into the engine's
// RunSpec (worker/engine/spec/run_spec.h). Total over the job's settings:
// the round-trip test in job_options_test.cc fails when a field is added to
// the proto's hyperparameters or LoRA settings and not here, or to the run
// spec and neither here nor on its list of settings the agent or the engine
// owns.
#ifndef LATHE_WORKER_AGENT_JOB_OPTIONS_H_
#define LATHE_WORKER_AGENT_JOB_OPTIONS_H_

#include "absl/status/statusor.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "worker/engine/merge/merge_spec.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::worker {

// The run settings of `job` (adapter, objective, hyperparameters, LoRA,
// seed, base model name). Paths (model, data, output, checkpoints, resume)
// and the device are the agent's to fill. INVALID_ARGUMENT naming the field
// for a value the engine has no name for (an unknown scheduler, adapter
// type or method).
absl::StatusOr<engine::RunSpec> RunSpecForJob(const v1::Job& job);

// The inverse over the same fields, for the round-trip test.
v1::Job JobForRunSpec(const engine::RunSpec& spec);

// A merge job (method.type "merge", resolved) as the engine's MergeSpec:
// the parameters, DARE's seed (the job's), and the inputs named by their
// model names. The base, input and validation paths and the output are the
// agent's to fill. INVALID_ARGUMENT naming the field for an unresolved or
// unknown setting.
absl::StatusOr<engine::MergeSpec> MergeSpecForJob(const v1::Job& job);

// What the after-job reports of a finished run found (METHODS.md §9), as
// the job's report: the forgetting report when the run had a general file,
// the intruder counts when it counted them.
v1::JobReport ReportForResult(const engine::RunSpec& spec,
                              const engine::TrainResult& result);

}  // namespace lathe::worker

#endif  // LATHE_WORKER_AGENT_JOB_OPTIONS_H_
