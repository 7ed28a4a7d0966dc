// Writing a LlamaModel as a Hugging Face model folder (full fine-tuning's
// output, and the merged form of a LoRA run).
#ifndef LATHE_WORKER_ENGINE_MODEL_MODEL_EXPORT_H_
#define LATHE_WORKER_ENGINE_MODEL_MODEL_EXPORT_H_

#include <torch/torch.h>

#include <string>

#include "absl/status/status.h"
#include "worker/engine/model/llama.h"

namespace lathe::engine {

// Copies into `out_dir` (created if needed) every file of the model folder
// `source_dir` except its weights: config.json, tokenizer files, ...
// INTERNAL on I/O failure.
absl::Status CopyModelFolderFiles(const std::string& source_dir,
                                  const std::string& out_dir);

// Writes into `out_dir` (created if needed) every file of the model folder
// `source_dir` except its weights (config.json, tokenizer files, ...), and
// model.safetensors holding `model`'s weights in `dtype`, with any attached
// LoRA merged in (W + scale * B A). A sharded source becomes one file.
// INTERNAL on I/O failure.
absl::Status SaveModelFolder(const LlamaModel& model,
                             const std::string& source_dir,
                             const std::string& out_dir,
                             torch::ScalarType dtype);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_MODEL_EXPORT_H_
