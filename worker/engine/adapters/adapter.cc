#include "worker/engine/adapters/adapter.h"

#include "common/status_macros.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/adapters/prompt_tuning.h"
#include "worker/engine/model/model_export.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

absl::Status MakeTrainable(LlamaModel& model, const AdapterSpec& adapter,
                           const Tokenizer* tokenizer) {
  if (const LoraSpec* lora = Lora(adapter)) return AttachLora(model, *lora);
  if (const auto* prompt = std::get_if<PromptTuningSpec>(&adapter)) {
    return AttachPromptTuning(model, *prompt, tokenizer);
  }
  for (auto& [name, weight] : model.Weights(/*merge_lora=*/false)) {
    weight.requires_grad_(true);
  }
  return absl::OkStatus();
}

std::vector<AdamW::Param> TrainableParams(const LlamaModel& model,
                                          const AdapterSpec& adapter) {
  std::vector<AdamW::Param> params;
  if (std::holds_alternative<PromptTuningSpec>(adapter)) {
    return {{"prompt_embeddings", model.prompt_embeddings(), true}};
  }
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
  return std::holds_alternative<FullSpec>(adapter)
             ? "model.safetensors"
             : "adapter_model.safetensors";
}

std::string AdapterBaseName(const ModelSpec& model_spec,
                            const ModelConfig& config) {
  if (!config.hub_name.empty()) return config.hub_name;
  return model_spec.base_model_name.empty() ? model_spec.dir
                                            : model_spec.base_model_name;
}

absl::Status SaveTrained(const LlamaModel& model, const AdapterSpec& adapter,
                         const ModelSpec& model_spec, const std::string& dir,
                         torch::ScalarType dtype) {
  if (const LoraSpec* lora = Lora(adapter)) {
    return SaveAdapter(model, *lora,
                       AdapterBaseName(model_spec, model.config()), dir);
  }
  if (const auto* prompt = std::get_if<PromptTuningSpec>(&adapter)) {
    return SavePromptTuning(model, *prompt,
                            AdapterBaseName(model_spec, model.config()), dir);
  }
  return SaveModelFolder(model, model_spec.dir, dir, dtype);
}

absl::StatusOr<AdapterSpec> LoadTrained(LlamaModel& model,
                                        const std::string& dir) {
  ASSIGN_OR_RETURN(const nlohmann::json config,
                   ReadJsonFile(dir + "/adapter_config.json"));
  if (config.value("peft_type", "") == "PROMPT_TUNING") {
    ASSIGN_OR_RETURN(PromptTuningSpec prompt, LoadPromptTuning(model, dir));
    return AdapterSpec(prompt);
  }
  ASSIGN_OR_RETURN(LoraSpec lora, LoadAdapter(model, dir));
  return AdapterSpec(lora);
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
