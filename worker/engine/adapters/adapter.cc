#include "worker/engine/adapters/adapter.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/adapters/prompt_tuning.h"
#include "worker/engine/adapters/s2ft.h"
#include "worker/engine/model/model_export.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

absl::Status MakeTrainable(LlamaModel& model, const AdapterSpec& adapter,
                           const Tokenizer* tokenizer, uint64_t run_seed) {
  if (const LoraSpec* lora = Lora(adapter)) return AttachLora(model, *lora);
  if (const auto* s2 = std::get_if<S2ftSpec>(&adapter)) {
    return AttachS2ft(model, *s2, run_seed);
  }
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
  const bool s2ft = std::holds_alternative<S2ftSpec>(adapter);
  const TensorMap named = Lora(adapter) != nullptr ? LoraParameters(model)
                          : s2ft ? S2ftParameters(model)
                                 : model.Weights(/*merge_lora=*/false);
  for (const auto& [name, tensor] : named) {
    // LoRA: every factor, DoRA's magnitude too (transformers' Trainer
    // exempts only biases and norm layers' weights).
    params.push_back(
        {name, tensor, Lora(adapter) != nullptr || s2ft || tensor.dim() >= 2});
  }
  return params;
}

std::string TrainedWeightsFile(const AdapterSpec& adapter) {
  return std::holds_alternative<FullSpec>(adapter)   ? "model.safetensors"
         : std::holds_alternative<S2ftSpec>(adapter) ? kS2ftWeightsFile
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
                         torch::ScalarType dtype, uint64_t run_seed) {
  if (const auto* s2 = std::get_if<S2ftSpec>(&adapter)) {
    return SaveS2ft(model, *s2, run_seed,
                    AdapterBaseName(model_spec, model.config()), dir);
  }
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
  if (std::filesystem::exists(absl::StrCat(dir, "/", kS2ftConfigFile)) &&
      !std::filesystem::exists(dir + "/adapter_config.json")) {
    ASSIGN_OR_RETURN(S2ftSpec s2, LoadS2ft(model, dir));
    return AdapterSpec(s2);
  }
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
                          const OutputSpec& output, uint64_t run_seed) {
  ASSIGN_OR_RETURN(torch::ScalarType dtype, ModelWeightsDtype(model_spec.dir));
  RETURN_IF_ERROR(
      SaveTrained(model, adapter, model_spec, output.dir, dtype, run_seed));
  if (std::holds_alternative<S2ftSpec>(adapter)) {
    // The merged model from the base's files plus the diff: exact where
    // nothing was trained, even when training held the base in bf16.
    return ExportS2ftMerged(model_spec.dir, output.dir);
  }
  if (Lora(adapter) == nullptr || output.merged_dir.empty()) {
    return absl::OkStatus();
  }
  return SaveModelFolder(model, model_spec.dir, output.merged_dir, dtype);
}

}  // namespace lathe::engine
