// What a run trains, by the adapter section's kind: LoRA factors (lora.h),
// every weight of the model (full fine-tuning), or prompt tuning's virtual
// tokens (prompt_tuning.h). The one place that
// branches on the adapter kind; recipes call these and never test it.
#ifndef LATHE_WORKER_ENGINE_ADAPTERS_ADAPTER_H_
#define LATHE_WORKER_ENGINE_ADAPTERS_ADAPTER_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/optim/adamw.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

// Makes `adapter`'s tensors trainable: fresh LoRA factors or prompt
// embeddings (drawn from torch's global generator), S²FT's zero deltas on
// the slices drawn from its seed (`run_seed` when it has none), or
// requires_grad on every weight. `tokenizer`: for prompt tuning's text init.
absl::Status MakeTrainable(LlamaModel& model, const AdapterSpec& adapter,
                           const Tokenizer* tokenizer, uint64_t run_seed);

// The trained tensors, named as in the adapter's weight file. Weight decay
// applies to LoRA's A, B and DoRA magnitudes, S²FT's deltas, and to full
// fine-tuning's matrices (not to norms and biases, as transformers' Trainer
// does).
std::vector<AdamW::Param> TrainableParams(const LlamaModel& model,
                                          const AdapterSpec& adapter);

// The file of SaveTrained's folder that holds the trained tensors.
std::string TrainedWeightsFile(const AdapterSpec& adapter);

// adapter_config.json's base_model_name_or_path: the Hugging Face id from
// config.json, else model.base_model_name, else model.dir.
std::string AdapterBaseName(const ModelSpec& model_spec,
                            const ModelConfig& config);

// Writes what was trained to `dir`: the PEFT adapter (LoRA, float32),
// S²FT's sparse diff (adapters/s2ft.h; its seed resolved with `run_seed`),
// or a model folder in the base's layout with its weights in `dtype` (full).
absl::Status SaveTrained(const LlamaModel& model, const AdapterSpec& adapter,
                         const ModelSpec& model_spec, const std::string& dir,
                         torch::ScalarType dtype, uint64_t run_seed);

// Loads the PEFT adapter folder `dir` (LORA or PROMPT_TUNING, by its
// adapter_config.json), or an S²FT diff (s2ft_config.json), into `model`.
// Errors as LoadAdapter / LoadPromptTuning / LoadS2ft.
absl::StatusOr<AdapterSpec> LoadTrained(LlamaModel& model,
                                        const std::string& dir);

// The run's result: SaveTrained to output.dir in the base model's dtype,
// and for LoRA the merged model folder to output.merged_dir when set. An
// S²FT result is both in output.dir: the merged model folder (loads in
// transformers) with the sparse diff's two files beside it.
absl::Status ExportResult(const LlamaModel& model, const AdapterSpec& adapter,
                          const ModelSpec& model_spec,
                          const OutputSpec& output, uint64_t run_seed);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ADAPTERS_ADAPTER_H_
