// A PEFT adapter folder, whatever the adapter: adapter_config.json and
// adapter_model.safetensors. LoRA (lora.h) and prompt tuning
// (prompt_tuning.h) write and read theirs through these.
#ifndef LATHE_WORKER_ENGINE_ADAPTERS_PEFT_FOLDER_H_
#define LATHE_WORKER_ENGINE_ADAPTERS_PEFT_FOLDER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

// Creates `dir` and writes `config` and `tensors` (float32, "format": "pt"
// as PEFT's save_pretrained). INTERNAL when the folder cannot be made.
absl::Status WritePeftFolder(const std::string& dir,
                             const nlohmann::json& config,
                             const TensorMap& tensors);

// `dir`/adapter_config.json, which must have "peft_type": `peft_type`.
// Errors as ReadJsonFile, or PeftConfigError on peft_type.
absl::StatusOr<nlohmann::json> ReadPeftConfig(const std::string& dir,
                                              const std::string& peft_type);

// INVALID_ARGUMENT `dir`/adapter_config.json: field "`field`" `problem`.
absl::Status PeftConfigError(const std::string& dir, const std::string& field,
                             const std::string& problem);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ADAPTERS_PEFT_FOLDER_H_
