#include "worker/engine/checkpoint/run_checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/checkpoint/checkpoint.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// The generator of `device` a run draws from: its own when it has one
// (`run`, of that device), else the device's default.
at::Generator TorchGenerator(torch::Device device = torch::kCPU,
                             const at::Generator& run = at::Generator()) {
  if (run.defined() && run.device().type() == device.type()) return run;
  return at::globalContext().defaultGenerator(device);
}

}  // namespace

absl::StatusOr<std::string> FileFingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  uint64_t hash = 14695981039346656037ull;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      hash = (hash ^ static_cast<unsigned char>(buffer[i])) * 1099511628211ull;
    }
  }
  return absl::StrCat(absl::Hex(hash, absl::kZeroPad16));
}

absl::StatusOr<Json> RunFingerprint(Json keys, const std::string& model_dir,
                                    const std::string& training_file) {
  ASSIGN_OR_RETURN(keys["model_config_fnv1a64"],
                   FileFingerprint(model_dir + "/config.json"));
  ASSIGN_OR_RETURN(keys["training_file_fnv1a64"],
                   FileFingerprint(training_file));
  return keys;
}

absl::StatusOr<SavedCheckpoint> SaveRunCheckpoint(
    const CheckpointSpec& spec,
    const std::function<absl::Status(const std::string& dir)>& save_weights,
    const AdamW& optimizer, const Progress& progress, const DataCursor& data,
    int64_t total_steps, const Json& fingerprint, torch::Device device,
    const Json& selection, const at::Generator& run_generator) {
  if (spec.dir.empty()) {
    return absl::FailedPreconditionError(
        "a checkpoint was requested but the run has no checkpoint.dir");
  }
  SavedCheckpoint saved;
  saved.dir = absl::StrCat(spec.dir, "/step-", progress.step);
  const std::string temp = saved.dir + ".tmp";
  std::error_code error;
  std::filesystem::remove_all(temp, error);
  std::filesystem::create_directories(temp, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", temp, ": ", error.message()));
  }
  RETURN_IF_ERROR(save_weights(temp));
  TrainerState state;
  state.step = progress.step;
  state.total_steps = total_steps;
  state.epoch = data.epoch;
  state.cursor = static_cast<int64_t>(data.next);
  state.trained_tokens = progress.trained_tokens;
  state.first_loss = progress.first_loss;
  state.last_loss = progress.last_loss;
  std::ostringstream rng;
  rng << data.rng;
  state.data_rng = rng.str();
  state.data_order.assign(data.order.begin(), data.order.end());
  {
    at::Generator generator = TorchGenerator(torch::kCPU, run_generator);
    std::lock_guard<std::mutex> lock(generator.mutex());
    state.torch_rng = generator.get_state();
  }
  if (!device.is_cpu()) {
    at::Generator generator = TorchGenerator(device, run_generator);
    std::lock_guard<std::mutex> lock(generator.mutex());
    state.device_rng = generator.get_state();
  }
  state.optimizer_steps = optimizer.steps();
  state.optimizer = optimizer.State();
  state.fingerprint = fingerprint;
  state.selection = selection;
  RETURN_IF_ERROR(WriteTrainerState(temp, state));
  ASSIGN_OR_RETURN(saved.files, CommitDirectory(temp, saved.dir));
  spdlog::info("checkpoint at step {} written to {}", progress.step,
               saved.dir);
  return saved;
}

absl::Status ResumeRunCheckpoint(
    const std::string& dir, const std::string& weights_file,
    const std::vector<AdamW::Param>& params, AdamW& optimizer,
    Progress& progress, DataCursor& data, int64_t total_steps,
    const Json& fingerprint, torch::Device device,
    const std::function<absl::Status(const Json&)>& restore_selection,
    const at::Generator& run_generator) {
  ASSIGN_OR_RETURN(TrainerState state, ReadTrainerState(dir));
  RETURN_IF_ERROR(CheckFingerprint(state.fingerprint, fingerprint));
  const std::string state_path = dir + "/" + kTrainerStateJson;
  if (state.total_steps != total_steps || state.step < 0 ||
      state.step > total_steps || state.epoch < 0 ||
      state.data_order.size() != data.order.size() || state.cursor < 0 ||
      state.cursor > static_cast<int64_t>(state.data_order.size())) {
    return absl::DataLossError(
        absl::StrCat(state_path,
                     ": its step, epoch or data position does not fit this "
                     "run's data"));
  }
  for (int64_t index : state.data_order) {
    if (index < 0 || index >= static_cast<int64_t>(data.examples)) {
      return absl::DataLossError(
          absl::StrCat(state_path, ": data order holds index ", index));
    }
  }
  std::mt19937_64 data_rng;
  std::istringstream rng(state.data_rng);
  rng >> data_rng;
  if (rng.fail()) {
    return absl::DataLossError(
        absl::StrCat(state_path, ": field \"data_rng\" is malformed"));
  }

  const std::string weights_path = dir + "/" + weights_file;
  // S²FT checkpoints hold indices beside the deltas.
  ASSIGN_OR_RETURN(TensorMap saved, LoadSafetensors(weights_path, /*int64_indices=*/true));
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const AdamW::Param& p : params) {
    ASSIGN_OR_RETURN(
        torch::Tensor value,
        TakeTensor(saved, p.name, p.value.sizes().vec(), weights_path));
    copies.push_back({p.value, std::move(value)});
  }
  {
    at::Generator generator = TorchGenerator(torch::kCPU, run_generator);
    std::lock_guard<std::mutex> lock(generator.mutex());
    if (!state.torch_rng.sizes().equals(generator.get_state().sizes())) {
      return absl::DataLossError(
          absl::StrCat(dir, "/", kTrainerStateTensors,
                       ": \"rng/torch\" has the wrong size"));
    }
    generator.set_state(state.torch_rng);
  }
  // A checkpoint written on another kind of device resumes with fresh
  // device draws: the same data and weights, other dropout masks.
  if (!device.is_cpu() && state.device_rng.defined()) {
    at::Generator generator = TorchGenerator(device, run_generator);
    std::lock_guard<std::mutex> lock(generator.mutex());
    if (state.device_rng.sizes().equals(generator.get_state().sizes())) {
      generator.set_state(state.device_rng);
    }
  }
  if (restore_selection) {
    absl::Status selected = restore_selection(state.selection);
    if (!selected.ok()) {
      return absl::DataLossError(
          absl::StrCat(state_path, ": ", selected.message()));
    }
  }
  absl::Status restored =
      optimizer.Restore(state.optimizer_steps, state.optimizer);
  if (!restored.ok()) {
    return absl::DataLossError(
        absl::StrCat(dir, "/", kTrainerStateTensors, ": ", restored.message()));
  }
  torch::NoGradGuard no_grad;
  for (auto& [param, value] : copies) param.copy_(value);
  progress = {state.step, state.trained_tokens, state.first_loss,
              state.last_loss};
  data.rng = data_rng;
  data.epoch = state.epoch;
  data.next = static_cast<size_t>(state.cursor);
  data.order.assign(state.data_order.begin(), state.data_order.end());
  spdlog::info("resumed from {} at step {} (epoch {}, example {})", dir,
               state.step, state.epoch, state.cursor);
  return absl::OkStatus();
}

}  // namespace lathe::engine
