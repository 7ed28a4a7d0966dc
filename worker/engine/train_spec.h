// A local training spec: a JSON object whose fields are TrainOptions' fields
// ("lora" an object of LoraOptions' fields). Torch-free.
#ifndef LATHE_WORKER_ENGINE_TRAIN_SPEC_H_
#define LATHE_WORKER_ENGINE_TRAIN_SPEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"
#include "worker/engine/trainer.h"

namespace lathe::engine {

// Fields absent from `spec` keep TrainOptions' defaults; relative paths are
// resolved against `base_dir`. INVALID_ARGUMENT naming the field for an
// unknown field or a value of the wrong type.
absl::StatusOr<TrainOptions> ParseTrainSpec(const nlohmann::json& spec,
                                            const std::string& base_dir);

// The spec that ParseTrainSpec reads back as `options`.
nlohmann::json TrainSpecJson(const TrainOptions& options);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TRAIN_SPEC_H_
