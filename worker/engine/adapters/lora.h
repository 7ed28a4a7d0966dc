// LoRA adapters on a LlamaModel's projections, and their Hugging Face PEFT
// files (adapter_config.json + adapter_model.safetensors).
#ifndef LATHE_WORKER_ENGINE_ADAPTERS_LORA_H_
#define LATHE_WORKER_ENGINE_ADAPTERS_LORA_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model/llama.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// Gives `options.target_modules` of every layer (of those in
// layers_to_transform, when set) fresh trainable LoRA weights: A [r, in]
// kaiming-uniform as PEFT initializes it (U(-1/sqrt(in), 1/sqrt(in))),
// B [out, r] zeros, scale alpha / r (alpha / sqrt(r) with use_rslora), and
// with use_dora the magnitude m [out] = the row norms of W (so that the
// adapted model starts as the base). Draws from torch's global generator,
// so torch::manual_seed makes it reproducible. INVALID_ARGUMENT naming the
// field (Validate(AdapterSpec), "adapter.layers_to_transform" for a layer
// the model lacks) for an adapter this engine cannot build.
absl::Status AttachLora(LlamaModel& model, const LoraSpec& options);

// The A and B tensors (and DoRA's m) of every adapted projection, keyed by
// their names in adapter_model.safetensors (see SaveAdapter); they share
// storage with the model.
TensorMap LoraParameters(const LlamaModel& model);

// Writes the model's LoRA weights to `dir` (created if needed) in the PEFT
// layout, keys
// "base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight" etc.,
// DoRA's "....q_proj.lora_magnitude_vector" [out] (no ".weight", as PEFT
// writes it), float32, metadata {"format": "pt"}; adapter_config.json with
// "use_dora" and "layers_to_transform" (null = every layer). INTERNAL on
// I/O failure.
absl::Status SaveAdapter(const LlamaModel& model, const LoraSpec& options,
                         const std::string& base_model_name,
                         const std::string& dir);

// The scale of `options`' factors: alpha / r, or alpha / sqrt(r) with
// use_rslora.
double LoraScale(const LoraSpec& options);

// The name of a factor in adapter_model.safetensors: `which` "lora_A" or
// "lora_B" of projection `module` ("q_proj") of decoder layer `layer`,
// "base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight".
std::string LoraFactorKey(size_t layer, const std::string& module,
                          const char* which);

// The adapter_config.json SaveAdapter writes for `options`.
nlohmann::json LoraConfigJson(const LoraSpec& options,
                              const std::string& base_model_name);

// The options of the PEFT LoRA adapter in `dir`, from its
// adapter_config.json (whether its layers exist is the caller's to check).
// INVALID_ARGUMENT naming the field for an unsupported config; errors as
// ReadPeftConfig.
absl::StatusOr<LoraSpec> ReadLoraConfig(const std::string& dir);

// Reads a PEFT LoRA adapter from `dir` and attaches it (frozen) to `model`.
// Returns its options. INVALID_ARGUMENT naming the field or tensor for an
// unsupported config, a missing, unexpected or mis-shaped tensor.
absl::StatusOr<LoraSpec> LoadAdapter(LlamaModel& model, const std::string& dir);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ADAPTERS_LORA_H_
