// Loading safetensors files into float32 LibTorch tensors.
#ifndef LATHE_WORKER_ENGINE_MODEL_WEIGHTS_H_
#define LATHE_WORKER_ENGINE_MODEL_WEIGHTS_H_

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lathe::engine {

using TensorMap = std::map<std::string, torch::Tensor>;

// Every tensor of the safetensors file at `path`, converted from F32, F16 or
// BF16 to float32 CPU tensors (copied out of a read-only mapping).
// NOT_FOUND / DATA_LOSS as safetensors::ReadHeaderFile; INVALID_ARGUMENT
// naming the tensor for any other dtype.
absl::StatusOr<TensorMap> LoadSafetensors(const std::string& path);

// The weights of a Hugging Face model folder: model.safetensors, or the
// shards listed in model.safetensors.index.json.
absl::StatusOr<TensorMap> LoadModelWeights(const std::string& model_dir);

// Moves the tensor called `name` out of `tensors`. INVALID_ARGUMENT naming
// `source` and the tensor when it is missing or its shape is not `shape`.
absl::StatusOr<torch::Tensor> TakeTensor(TensorMap& tensors,
                                         const std::string& name,
                                         const std::vector<int64_t>& shape,
                                         const std::string& source);

// Writes `tensors` to `path` (atomically) with `metadata`, converted to
// `dtype` (float32, float16 or bfloat16).
absl::Status SaveSafetensors(const std::string& path, const TensorMap& tensors,
                             const std::map<std::string, std::string>& metadata,
                             torch::ScalarType dtype = torch::kFloat32);

// The dtype a Hugging Face model folder stores its weights in (that of the
// first tensor of model.safetensors or of its first shard). Errors as
// LoadModelWeights.
absl::StatusOr<torch::ScalarType> ModelWeightsDtype(
    const std::string& model_dir);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_WEIGHTS_H_
