#include "worker/engine/adapters/adapter.h"

#include "common/status_macros.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/model/model_export.h"

namespace lathe::engine {

absl::Status MakeTrainable(LlamaModel& model, const AdapterSpec& adapter) {
  if (const LoraSpec* lora = Lora(adapter)) return AttachLora(model, *lora);
  for (auto& [name, weight] : model.Weights(/*merge_lora=*/false)) {
    weight.requires_grad_(true);
  }
  return absl::OkStatus();
}

std::vector<AdamW::Param> TrainableParams(const LlamaModel& model,
                                          const AdapterSpec& adapter) {
  std::vector<AdamW::Param> params;
  const TensorMap named = Lora(adapter) != nullptr
                              ? LoraParameters(model)
                              : model.Weights(/*merge_lora=*/false);
  for (const auto& [name, tensor] : named) {
    // LoRA: every factor, DoRA's magnitude too (transformers' Trainer
    // exempts only biases and norm layers' weights).
    params.push_back(
        {name, tensor, Lora(adapter) != nullptr || tensor.dim() >= 2});
  }
  return params;
}

std::string TrainedWeightsFile(const AdapterSpec& adapter) {
  return Lora(adapter) != nullptr ? "adapter_model.safetensors"
                                  : "model.safetensors";
}

std::string AdapterBaseName(const ModelSpec& model_spec,
                            const LlamaModel& model) {
  if (!model.config().hub_name.empty()) return model.config().hub_name;
  return model_spec.base_model_name.empty() ? model_spec.dir
                                            : model_spec.base_model_name;
}

absl::Status SaveTrained(const LlamaModel& model, const AdapterSpec& adapter,
                         const ModelSpec& model_spec, const std::string& dir,
                         torch::ScalarType dtype) {
  if (const LoraSpec* lora = Lora(adapter)) {
    return SaveAdapter(model, *lora, AdapterBaseName(model_spec, model), dir);
  }
  return SaveModelFolder(model, model_spec.dir, dir, dtype);
}

absl::Status ExportResult(const LlamaModel& model, const AdapterSpec& adapter,
                          const ModelSpec& model_spec,
                          const OutputSpec& output) {
  ASSIGN_OR_RETURN(torch::ScalarType dtype, ModelWeightsDtype(model_spec.dir));
  RETURN_IF_ERROR(SaveTrained(model, adapter, model_spec, output.dir, dtype));
  if (Lora(adapter) == nullptr || output.merged_dir.empty()) {
    return absl::OkStatus();
  }
  return SaveModelFolder(model, model_spec.dir, output.merged_dir, dtype);
}

}  // namespace lathe::engine
