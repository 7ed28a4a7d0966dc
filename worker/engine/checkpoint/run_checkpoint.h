// A run's checkpoint as a whole: its trained weights (written by the
// caller, in the layout of the run's export), the optimizer, the data
// cursor, the counters and torch's generator, committed atomically as
// <checkpoint.dir>/step-<N>; and the resume that restores all of it.
// Recipe-independent: every recipe checkpoints through these.
#ifndef LATHE_WORKER_ENGINE_CHECKPOINT_RUN_CHECKPOINT_H_
#define LATHE_WORKER_ENGINE_CHECKPOINT_RUN_CHECKPOINT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/cursor.h"
#include "worker/engine/optim/adamw.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// The counters a checkpoint carries besides the optimizer and data state.
struct Progress {
  int64_t step = 0;
  int64_t trained_tokens = 0;
  double first_loss = 0;
  double last_loss = 0;
};

// FNV-1a (64-bit) of the bytes of `path`, as 16 hex digits: a content
// fingerprint (not a security hash). NOT_FOUND when it cannot be read.
absl::StatusOr<std::string> FileFingerprint(const std::string& path);

// What a resume must match (checkpoint.h's fingerprint): the spec's
// `resume_keys` (ResumeKeys) plus the content hashes of the model's
// config.json and the training file. NOT_FOUND when one cannot be read.
absl::StatusOr<nlohmann::json> RunFingerprint(nlohmann::json resume_keys,
                                              const std::string& model_dir,
                                              const std::string& training_file);

struct SavedCheckpoint {
  std::string dir;                 // <checkpoint.dir>/step-<step>
  std::vector<std::string> files;  // names inside dir, sorted
};

// Writes <checkpoint.dir>/step-<progress.step> atomically: `save_weights`
// fills the folder with the trained weights, then the trainer state (with
// the generator of `device` too when it is not the CPU: dropout draws
// there). `generator`, when defined, is the run's own generator of `device`
// (LlamaModel::generator()), kept in place of that device's default one.
// FAILED_PRECONDITION when the spec has no checkpoint.dir.
absl::StatusOr<SavedCheckpoint> SaveRunCheckpoint(
    const CheckpointSpec& spec,
    const std::function<absl::Status(const std::string& dir)>& save_weights,
    const AdamW& optimizer, const Progress& progress, const DataCursor& data,
    int64_t total_steps, const nlohmann::json& fingerprint,
    torch::Device device = torch::kCPU,
    const nlohmann::json& selection = nullptr,
    const at::Generator& generator = at::Generator());

// Restores `params` (from `dir`/`weights_file`), the optimizer, the
// counters, the data cursor and torch's generator from checkpoint `dir`
// (into `generator` when defined, as SaveRunCheckpoint).
// A run with a trainable selection passes `restore_selection`: it gets the
// checkpoint's selection state (null when it has none) before the optimizer
// is restored, so that it can set the optimizer's parameters to those the
// checkpoint's moments are of.
// FAILED_PRECONDITION naming the option when it was written with different
// resume keys; DATA_LOSS naming the file when its state does not fit this
// run.
absl::Status ResumeRunCheckpoint(
    const std::string& dir, const std::string& weights_file,
    const std::vector<AdamW::Param>& params, AdamW& optimizer,
    Progress& progress, DataCursor& data, int64_t total_steps,
    const nlohmann::json& fingerprint, torch::Device device = torch::kCPU,
    const std::function<absl::Status(const nlohmann::json&)>&
        restore_selection = nullptr,
    const at::Generator& generator = at::Generator());

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_CHECKPOINT_RUN_CHECKPOINT_H_
