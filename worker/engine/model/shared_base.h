// One frozen copy of a base model's weights per process, shared by every
// run that trains an adapter over it (several LoRA jobs of one worker on
// the same base): the weights are read and placed once, and each run builds
// its own LlamaModel over the same tensors (LlamaModel::FromTensors keeps
// them as given; Place leaves tensors already on the device in the storage
// dtype as they are), attaching its own adapter.
//
// Only runs that never write the base may share it: LoRA (DoRA too) and
// prompt tuning keep their trained tensors apart from the frozen weights.
// Full fine-tuning (which trains the weights) and S²FT (whose merged
// export reads the base's files) load their own.
//
// Thread-safe.
#ifndef LATHE_WORKER_ENGINE_MODEL_SHARED_BASE_H_
#define LATHE_WORKER_ENGINE_MODEL_SHARED_BASE_H_

#include <torch/torch.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

// A base model's config and weights on one device in one storage dtype.
// Never modified once made: every tensor is frozen (no requires_grad).
struct SharedBase {
  std::string dir;  // the model folder, canonical
  ModelConfig config;
  TensorMap weights;  // Hugging Face names, placed
  int64_t bytes = 0;  // of the weights
};

// The base of model folder `dir` on `device` in `storage`: the one already
// held by a live run when there is one (same folder, device and dtype),
// else read from the folder and placed, and kept while any run holds it.
// Callers that ask at once for a base not yet held wait for one read.
// Errors from LoadModelConfig / LoadModelWeights.
absl::StatusOr<std::shared_ptr<const SharedBase>> AcquireSharedBase(
    const std::string& dir, torch::Device device, torch::ScalarType storage);

// How many bases the process holds now (for tests and the benchmark).
int SharedBasesHeld();

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_SHARED_BASE_H_
