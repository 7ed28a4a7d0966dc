// Loading safetensors files into float32 LibTorch tensors.
#ifndef LATHE_WORKER_ENGINE_MODEL_WEIGHTS_H_
#define LATHE_WORKER_ENGINE_MODEL_WEIGHTS_H_

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"

namespace lathe::engine {

using TensorMap = std::map<std::string, torch::Tensor>;

// Every tensor of the safetensors file at `path`, converted from F32, F16 or
// BF16 to float32 CPU tensors (copied out of a read-only mapping); with
// `int64_indices`, I64 tensors too, kept int64 (S²FT's indices).
// NOT_FOUND / DATA_LOSS as safetensors::ReadHeaderFile; INVALID_ARGUMENT
// naming the tensor for any other dtype.
absl::StatusOr<TensorMap> LoadSafetensors(const std::string& path,
                                          bool int64_indices = false);

// The weights of a Hugging Face model folder: model.safetensors, or the
// shards listed in model.safetensors.index.json.
absl::StatusOr<TensorMap> LoadModelWeights(const std::string& model_dir);

// The weights of a Hugging Face model folder (as LoadModelWeights finds
// them), memory-mapped and read one tensor at a time, so that a caller can
// stream a model without holding it. Thread-compatible.
class ModelWeightsReader {
 public:
  // Maps the folder's weight files. Errors as LoadModelWeights; DATA_LOSS
  // when two shards hold the same tensor.
  static absl::StatusOr<std::unique_ptr<ModelWeightsReader>> Open(
      const std::string& model_dir);

  // Every tensor's shape ([] for a scalar), by name.
  const std::map<std::string, std::vector<int64_t>>& shapes() const {
    return shapes_;
  }

  // The tensor `name` as a float32 CPU tensor (a copy). INVALID_ARGUMENT
  // naming the file and the tensor when it is absent or not F32, F16 or
  // BF16.
  absl::StatusOr<torch::Tensor> Read(const std::string& name) const;

 private:
  struct Location {
    const safetensors::MappedFile* file;
    const safetensors::TensorInfo* info;
  };

  explicit ModelWeightsReader(std::string model_dir)
      : model_dir_(std::move(model_dir)) {}

  const std::string model_dir_;
  std::vector<std::unique_ptr<safetensors::MappedFile>> files_;
  std::map<std::string, Location> locations_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

// Moves the tensor called `name` out of `tensors`. INVALID_ARGUMENT naming
// `source` and the tensor when it is missing or its shape is not `shape`.
absl::StatusOr<torch::Tensor> TakeTensor(TensorMap& tensors,
                                         const std::string& name,
                                         const std::vector<int64_t>& shape,
                                         const std::string& source);

// Writes `tensors` to `path` (atomically) with `metadata`, converted to
// `dtype` (float32, float16 or bfloat16); int64 tensors are written as I64.
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
