#include "worker/engine/adapters/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/adapters/peft_folder.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// DoRA's magnitude: no ".weight" suffix, as PEFT saves it.
std::string MagnitudeKey(size_t layer, const std::string& module) {
  return absl::StrCat("base_model.model.model.layers.", layer, ".",
                      std::string(ProjectionGroup(module)), ".", module,
                      ".lora_magnitude_vector");
}

// Whether layer `i` gets factors (PEFT's layers_to_transform).
bool Transforms(const LoraSpec& options, size_t i) {
  return options.layers_to_transform.empty() ||
         std::find(options.layers_to_transform.begin(),
                   options.layers_to_transform.end(),
                   static_cast<int>(i)) != options.layers_to_transform.end();
}

absl::Status CheckLayers(const LoraSpec& options, const LlamaModel& model) {
  for (int layer : options.layers_to_transform) {
    if (layer >= static_cast<int>(model.layers().size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "field \"adapter.layers_to_transform\": layer ", layer,
          " does not exist; the model has ", model.layers().size(), " layers"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

double LoraScale(const LoraSpec& options) {
  return options.use_rslora ? options.alpha / std::sqrt(options.rank)
                            : options.alpha / options.rank;
}

std::string LoraFactorKey(size_t layer, const std::string& module,
                          const char* which) {
  return absl::StrCat("base_model.model.model.layers.", layer, ".",
                      std::string(ProjectionGroup(module)), ".", module, ".",
                      which, ".weight");
}

absl::Status AttachLora(LlamaModel& model, const LoraSpec& options) {
  RETURN_IF_ERROR(Validate(AdapterSpec(options)));
  RETURN_IF_ERROR(CheckLayers(options, model));
  for (size_t i = 0; i < model.layers().size(); ++i) {
    if (!Transforms(options, i)) continue;
    DecoderLayer& layer = model.layers()[i];
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
      if (options.use_dora) {
        // ||W + scale B A|| with B = 0: the row norms of W, as PEFT starts.
        linear.lora_magnitude = linear.DoraRowNorm().requires_grad_(true);
      }
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
      params[LoraFactorKey(i, name, "lora_A")] = linear.lora_a;
      params[LoraFactorKey(i, name, "lora_B")] = linear.lora_b;
      if (linear.lora_magnitude.defined()) {
        params[MagnitudeKey(i, name)] = linear.lora_magnitude;
      }
    }
  }
  return params;
}

Json LoraConfigJson(const LoraSpec& options,
                    const std::string& base_model_name) {
  return {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"r", options.rank},
      {"lora_alpha", options.alpha},
      {"lora_dropout", options.dropout},
      {"target_modules", options.target_modules},
      {"bias", "none"},
      {"use_rslora", options.use_rslora},
      {"use_dora", options.use_dora},
      {"layers_to_transform", options.layers_to_transform.empty()
                                  ? Json(nullptr)
                                  : Json(options.layers_to_transform)},
      {"layers_pattern", nullptr},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"modules_to_save", nullptr},
      {"base_model_name_or_path", base_model_name},
  };
}

absl::Status SaveAdapter(const LlamaModel& model, const LoraSpec& options,
                         const std::string& base_model_name,
                         const std::string& dir) {
  return WritePeftFolder(dir, LoraConfigJson(options, base_model_name),
                         LoraParameters(model));
}

absl::StatusOr<LoraSpec> ReadLoraConfig(const std::string& dir) {
  ASSIGN_OR_RETURN(Json config, ReadPeftConfig(dir, "LORA"));
  auto field_error = [&](const std::string& field, const std::string& problem) {
    return PeftConfigError(dir, field, problem);
  };
  if (!config.contains("r") || !config["r"].is_number_integer() ||
      config["r"].get<int64_t>() < 1 || config["r"].get<int64_t>() > 65536) {
    return field_error("r", "must be an integer from 1 to 65536");
  }
  if (!config.contains("lora_alpha") || !config["lora_alpha"].is_number()) {
    return field_error("lora_alpha", "must be a number");
  }
  if (!config.contains("target_modules") ||
      !config["target_modules"].is_array()) {
    return field_error("target_modules", "must be a list of module names");
  }
  if (config.value("fan_in_fan_out", false)) {
    return field_error("fan_in_fan_out", "true is not supported");
  }
  if (config.contains("use_dora") && !config["use_dora"].is_boolean()) {
    return field_error("use_dora", "must be true or false");
  }
  // PEFT takes an int or a list of ints; null = every layer.
  std::vector<int> layers;
  const auto is_layer = [](const Json& e) {
    return e.is_number_integer() && e.get<int64_t>() >= 0 &&
           e.get<int64_t>() < (int64_t{1} << 20);
  };
  if (auto it = config.find("layers_to_transform");
      it != config.end() && !it->is_null()) {
    if (is_layer(*it)) {
      layers.push_back(it->get<int>());
    } else if (it->is_array() && std::all_of(it->begin(), it->end(), is_layer)) {
      layers = it->get<std::vector<int>>();
    } else {
      return field_error("layers_to_transform",
                         "must be a layer index or a list of them");
    }
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
  options.use_dora = config.value("use_dora", false);
  options.layers_to_transform = layers;
  if (absl::Status valid = Validate(AdapterSpec(options)); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/adapter_config.json: ", valid.message()));
  }
  return options;
}

absl::StatusOr<LoraSpec> LoadAdapter(LlamaModel& model,
                                     const std::string& dir) {
  ASSIGN_OR_RETURN(const LoraSpec options, ReadLoraConfig(dir));
  if (absl::Status valid = CheckLayers(options, model); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/adapter_config.json: ", valid.message()));
  }
  const double scale = LoraScale(options);

  const std::string weights_path = dir + "/adapter_model.safetensors";
  ASSIGN_OR_RETURN(TensorMap tensors, LoadSafetensors(weights_path));
  // Check every tensor before touching the model, so a bad file leaves it
  // as it was.
  struct Factors {
    Linear* linear;
    torch::Tensor a, b, magnitude;
  };
  std::vector<Factors> pending;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    if (!Transforms(options, i)) continue;
    for (const std::string& module : options.target_modules) {
      Linear* linear = model.layers()[i].Projection(module);
      const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
      ASSIGN_OR_RETURN(torch::Tensor a,
                       TakeTensor(tensors, LoraFactorKey(i, module, "lora_A"),
                                  {options.rank, in}, weights_path));
      ASSIGN_OR_RETURN(torch::Tensor b,
                       TakeTensor(tensors, LoraFactorKey(i, module, "lora_B"),
                                  {out, options.rank}, weights_path));
      torch::Tensor magnitude;
      if (options.use_dora) {
        ASSIGN_OR_RETURN(magnitude, TakeTensor(tensors, MagnitudeKey(i, module),
                                               {out}, weights_path));
      }
      pending.push_back(
          {linear, std::move(a), std::move(b), std::move(magnitude)});
    }
  }
  if (!tensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        weights_path, ": unexpected tensor \"", tensors.begin()->first, "\""));
  }
  for (Factors& f : pending) {
    Linear* linear = f.linear;
    linear->lora_a = f.a.to(linear->weight.device());
    linear->lora_b = f.b.to(linear->weight.device());
    if (f.magnitude.defined()) {
      linear->lora_magnitude = f.magnitude.to(linear->weight.device());
    }
    linear->lora_scale = scale;
    linear->lora_dropout = options.dropout;
  }
  return options;
}

}  // namespace lathe::engine
