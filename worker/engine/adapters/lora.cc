#include "worker/engine/adapters/lora.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/text/json_file.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

std::string PeftKey(size_t layer, const std::string& module,
                    const char* which) {
  return absl::StrCat("base_model.model.model.layers.", layer, ".",
                      std::string(ProjectionGroup(module)), ".", module, ".",
                      which, ".weight");
}

double LoraScale(const LoraSpec& options) {
  return options.use_rslora ? options.alpha / std::sqrt(options.rank)
                            : options.alpha / options.rank;
}

}  // namespace

absl::Status AttachLora(LlamaModel& model, const LoraSpec& options) {
  RETURN_IF_ERROR(Validate(AdapterSpec(options)));
  for (DecoderLayer& layer : model.layers()) {
    for (const std::string& module : options.target_modules) {
      Linear& linear = *layer.Projection(module);
      const int64_t out = linear.weight.size(0), in = linear.weight.size(1);
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      // float32 masters on the base's device, whatever the base's dtype.
      const auto on_device = torch::TensorOptions()
                                 .dtype(torch::kFloat32)
                                 .device(linear.weight.device());
      linear.lora_a = torch::empty({options.rank, in}, on_device)
                          .uniform_(-bound, bound)
                          .requires_grad_(true);
      linear.lora_b =
          torch::zeros({out, options.rank}, on_device).requires_grad_(true);
      linear.lora_scale = LoraScale(options);
      linear.lora_dropout = options.dropout;
    }
  }
  return absl::OkStatus();
}

TensorMap LoraParameters(const LlamaModel& model) {
  TensorMap params;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    for (const char* name : kProjectionNames) {
      const Linear& linear = *model.layers()[i].Projection(name);
      if (!linear.lora_a.defined()) continue;
      params[PeftKey(i, name, "lora_A")] = linear.lora_a;
      params[PeftKey(i, name, "lora_B")] = linear.lora_b;
    }
  }
  return params;
}

absl::Status SaveAdapter(const LlamaModel& model, const LoraSpec& options,
                         const std::string& base_model_name,
                         const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", error.message()));
  }
  const Json config = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"r", options.rank},
      {"lora_alpha", options.alpha},
      {"lora_dropout", options.dropout},
      {"target_modules", options.target_modules},
      {"bias", "none"},
      {"use_rslora", options.use_rslora},
      {"use_dora", false},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"modules_to_save", nullptr},
      {"base_model_name_or_path", base_model_name},
  };
  RETURN_IF_ERROR(WriteJsonFile(dir + "/adapter_config.json", config));
  return SaveSafetensors(dir + "/adapter_model.safetensors",
                         LoraParameters(model), {{"format", "pt"}});
}

absl::StatusOr<LoraSpec> LoadAdapter(LlamaModel& model,
                                        const std::string& dir) {
  const std::string config_path = dir + "/adapter_config.json";
  ASSIGN_OR_RETURN(Json config, ReadJsonFile(config_path));
  auto field_error = [&](const std::string& field, const std::string& problem) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": field \"", field, "\" ", problem));
  };
  if (config.value("peft_type", "") != "LORA") {
    return field_error("peft_type", "must be \"LORA\"");
  }
  if (!config.contains("r") || !config["r"].is_number_integer()) {
    return field_error("r", "must be an integer");
  }
  if (!config.contains("lora_alpha") || !config["lora_alpha"].is_number()) {
    return field_error("lora_alpha", "must be a number");
  }
  if (!config.contains("target_modules") ||
      !config["target_modules"].is_array()) {
    return field_error("target_modules", "must be a list of module names");
  }
  for (const char* flag : {"fan_in_fan_out", "use_dora"}) {
    if (config.value(flag, false))
      return field_error(flag, "true is not supported");
  }
  if (config.value("bias", "none") != "none") {
    return field_error("bias", "must be \"none\"");
  }
  LoraSpec options;
  options.rank = config["r"].get<int>();
  options.alpha = config["lora_alpha"].get<double>();
  options.dropout = config.value("lora_dropout", 0.0);
  options.use_rslora = config.value("use_rslora", false);
  options.target_modules =
      config["target_modules"].get<std::vector<std::string>>();
  if (absl::Status valid = Validate(AdapterSpec(options)); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": ", valid.message()));
  }
  const double scale = LoraScale(options);

  const std::string weights_path = dir + "/adapter_model.safetensors";
  ASSIGN_OR_RETURN(TensorMap tensors, LoadSafetensors(weights_path));
  // Check every tensor before touching the model, so a bad file leaves it
  // as it was.
  std::vector<std::pair<Linear*, std::pair<torch::Tensor, torch::Tensor>>>
      pending;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    for (const std::string& module : options.target_modules) {
      Linear* linear = model.layers()[i].Projection(module);
      const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
      ASSIGN_OR_RETURN(torch::Tensor a,
                       TakeTensor(tensors, PeftKey(i, module, "lora_A"),
                                  {options.rank, in}, weights_path));
      ASSIGN_OR_RETURN(torch::Tensor b,
                       TakeTensor(tensors, PeftKey(i, module, "lora_B"),
                                  {out, options.rank}, weights_path));
      pending.push_back({linear, {std::move(a), std::move(b)}});
    }
  }
  if (!tensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        weights_path, ": unexpected tensor \"", tensors.begin()->first, "\""));
  }
  for (auto& [linear, ab] : pending) {
    linear->lora_a = ab.first.to(linear->weight.device());
    linear->lora_b = ab.second.to(linear->weight.device());
    linear->lora_scale = scale;
    linear->lora_dropout = options.dropout;
  }
  return options;
}

}  // namespace lathe::engine
