// Checkpoint I/O: the trainer's state besides its weights, and the atomic
// commit of a checkpoint folder.
//
// A checkpoint folder holds the trainable weights in the layout of the
// run's export (PEFT adapter files for LoRA, a model folder for full
// fine-tuning), written by the trainer, plus:
//   trainer_state.json         TrainerState's scalars, the fingerprint and
//                              the trainable selection ("selection")
//   trainer_state.safetensors  "optimizer/exp_avg/<param>" and
//                              "optimizer/exp_avg_sq/<param>" F32,
//                              "rng/torch" U8, "data/order" I64,
//                              "rng/device" U8 (runs on a GPU)
#ifndef LATHE_WORKER_ENGINE_CHECKPOINT_CHECKPOINT_H_
#define LATHE_WORKER_ENGINE_CHECKPOINT_CHECKPOINT_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

inline constexpr char kTrainerStateJson[] = "trainer_state.json";
inline constexpr char kTrainerStateTensors[] = "trainer_state.safetensors";

// Where a run stands after `step` optimizer steps.
struct TrainerState {
  int64_t step = 0;         // optimizer steps done, 120
  int64_t total_steps = 0;  // of the whole run, 600
  int epoch = 0;            // 0-based epoch the next step reads from
  int64_t cursor = 0;       // index into data_order of the next example
  int64_t trained_tokens = 0;
  double first_loss = 0;
  double last_loss = 0;
  std::string data_rng;  // the shuffle's std::mt19937_64, as << writes it
  std::vector<int64_t> data_order;  // this epoch's permutation of examples
  torch::Tensor torch_rng;          // U8: torch's CPU generator (dropout)
  torch::Tensor device_rng;  // U8: the run's device generator, when not CPU
  int64_t optimizer_steps = 0;      // AdamW::steps()
  TensorMap optimizer;              // AdamW::State()
  nlohmann::json fingerprint;       // options a resume must match
  // A trainable selection's state (adapters/selection.h), null without one.
  nlohmann::json selection;
};

// Writes trainer_state.json and trainer_state.safetensors into `dir`.
// INTERNAL on I/O failure.
absl::Status WriteTrainerState(const std::string& dir,
                               const TrainerState& state);

// Reads what WriteTrainerState wrote. NOT_FOUND naming the file when one is
// missing, DATA_LOSS naming the file and field when one is malformed.
absl::StatusOr<TrainerState> ReadTrainerState(const std::string& dir);

// OK when every field of `run` has the same value in `checkpoint`;
// FAILED_PRECONDITION naming the first field that differs otherwise.
absl::Status CheckFingerprint(const nlohmann::json& checkpoint,
                              const nlohmann::json& run);

// Makes the finished folder `temp` appear as `dir` in one step: fsyncs every
// file in `temp`, replaces `dir` (removing an older one) by renaming, and
// fsyncs the parent. Returns the names of the files in `dir`, sorted.
// INTERNAL on I/O failure.
absl::StatusOr<std::vector<std::string>> CommitDirectory(
    const std::string& temp, const std::string& dir);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_CHECKPOINT_CHECKPOINT_H_
