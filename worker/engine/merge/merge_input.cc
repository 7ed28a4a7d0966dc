#include "worker/engine/merge/merge_input.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/model/llama.h"

namespace lathe::engine {
namespace {

absl::Status InputError(const std::string& input, absl::string_view problem) {
  return WithErrorKind(absl::InvalidArgumentError(
                           absl::StrCat("input \"", input, "\": ", problem)),
                       ErrorKind::kUserOptions, "merge.inputs");
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The architecture fields two models of one base share, by config.json name.
std::vector<std::pair<const char*, std::string>> Architecture(
    const ModelConfig& c) {
  return {{"model_type", c.model_type},
          {"hidden_size", absl::StrCat(c.hidden_size)},
          {"intermediate_size", absl::StrCat(c.intermediate_size)},
          {"num_hidden_layers", absl::StrCat(c.num_hidden_layers)},
          {"num_attention_heads", absl::StrCat(c.num_attention_heads)},
          {"num_key_value_heads", absl::StrCat(c.num_key_value_heads)},
          {"head_dim", absl::StrCat(c.head_dim)},
          {"vocab_size", absl::StrCat(c.vocab_size)},
          {"tie_word_embeddings", c.tie_word_embeddings ? "true" : "false"},
          {"attention_bias", absl::StrCat(c.qkv_bias, "/", c.o_bias)}};
}

}  // namespace

std::string ProjectionWeightName(int64_t layer, const std::string& module) {
  return absl::StrCat("model.layers.", layer, ".",
                      std::string(ProjectionGroup(module)), ".", module,
                      ".weight");
}

int LayerOfWeight(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (!name.starts_with(prefix)) return -1;
  const size_t end = name.find('.', prefix.size());
  int layer = -1;
  if (end == std::string::npos ||
      !absl::SimpleAtoi(name.substr(prefix.size(), end - prefix.size()),
                        &layer)) {
    return -1;
  }
  return layer;
}

absl::StatusOr<std::unique_ptr<MergeBase>> MergeBase::Open(
    const std::string& dir) {
  std::unique_ptr<MergeBase> base(new MergeBase());
  base->dir_ = dir;
  ASSIGN_OR_RETURN(base->config_,
                   WithErrorKind(LoadModelConfig(dir), ErrorKind::kModel));
  ASSIGN_OR_RETURN(base->weights_, WithErrorKind(ModelWeightsReader::Open(dir),
                                                 ErrorKind::kModel));
  ASSIGN_OR_RETURN(base->dtype_,
                   WithErrorKind(ModelWeightsDtype(dir), ErrorKind::kModel));
  return base;
}

absl::StatusOr<std::unique_ptr<MergeInput>> MergeInput::Open(
    const MergeInputSpec& spec, const MergeBase& base) {
  const std::string name = spec.name.empty() ? spec.dir : spec.name;
  namespace fs = std::filesystem;
  if (fs::exists(fs::path(spec.dir) / "adapter_config.json")) {
    std::unique_ptr<MergeInput> input(new MergeInput(name, Kind::kLora));
    RETURN_IF_ERROR(input->OpenLora(spec.dir, base));
    return input;
  }
  if (fs::exists(fs::path(spec.dir) / "config.json")) {
    std::unique_ptr<MergeInput> input(new MergeInput(name, Kind::kModel));
    RETURN_IF_ERROR(input->OpenModel(spec.dir, base));
    return input;
  }
  return InputError(name,
                    "is neither a model folder (config.json) nor a PEFT "
                    "adapter folder (adapter_config.json)");
}

absl::Status MergeInput::OpenModel(const std::string& dir,
                                   const MergeBase& base) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return InputError(name_, config.status().message());
  const auto ours = Architecture(*config);
  const auto theirs = Architecture(base.config());
  for (size_t i = 0; i < ours.size(); ++i) {
    if (ours[i].second != theirs[i].second) {
      return InputError(
          name_, absl::StrCat("config.json field \"", ours[i].first, "\" is ",
                              ours[i].second, ", the base's is ",
                              theirs[i].second, ": not a fine-tune of it"));
    }
  }
  absl::StatusOr<std::unique_ptr<ModelWeightsReader>> weights =
      ModelWeightsReader::Open(dir);
  if (!weights.ok()) return InputError(name_, weights.status().message());
  weights_ = std::move(*weights);
  for (const auto& [tensor, shape] : base.shapes()) {
    auto it = weights_->shapes().find(tensor);
    if (it == weights_->shapes().end()) {
      return InputError(name_, absl::StrCat("has no tensor \"", tensor, "\""));
    }
    if (it->second != shape) {
      return InputError(name_,
                        absl::StrCat("tensor \"", tensor, "\" has shape ",
                                     ShapeText(it->second), ", the base's is ",
                                     ShapeText(shape)));
    }
  }
  for (const auto& [tensor, shape] : weights_->shapes()) {
    if (!base.shapes().contains(tensor)) {
      return InputError(name_, absl::StrCat("has tensor \"", tensor,
                                            "\", which the base lacks"));
    }
  }
  return absl::OkStatus();
}

absl::Status MergeInput::OpenLora(const std::string& dir,
                                  const MergeBase& base) {
  absl::StatusOr<LoraSpec> options = ReadLoraConfig(dir);
  if (!options.ok()) return InputError(name_, options.status().message());
  if (options->use_dora) {
    return InputError(name_,
                      "is a DoRA adapter, whose change is not s B A; merge "
                      "its merged model folder instead");
  }
  const int64_t layers = base.config().num_hidden_layers;
  for (int layer : options->layers_to_transform) {
    if (layer < 0 || layer >= layers) {
      return InputError(name_, absl::StrCat("adapts layer ", layer,
                                            "; the base has ", layers));
    }
  }
  const std::string weights_path = dir + "/adapter_model.safetensors";
  absl::StatusOr<TensorMap> tensors = LoadSafetensors(weights_path);
  if (!tensors.ok()) return InputError(name_, tensors.status().message());
  for (int64_t i = 0; i < layers; ++i) {
    const auto& only = options->layers_to_transform;
    if (!only.empty() && std::find(only.begin(), only.end(), i) == only.end()) {
      continue;
    }
    for (const std::string& module : options->target_modules) {
      const std::string weight = ProjectionWeightName(i, module);
      auto shape = base.shapes().find(weight);
      if (shape == base.shapes().end() || shape->second.size() != 2) {
        return InputError(name_, absl::StrCat("adapts \"", weight,
                                              "\", which the base lacks"));
      }
      const int64_t out = shape->second[0], in = shape->second[1];
      Factors f;
      for (auto [which, target, want] :
           {std::tuple{"lora_A", &f.a, std::vector<int64_t>{options->rank, in}},
            std::tuple{"lora_B", &f.b,
                       std::vector<int64_t>{out, options->rank}}}) {
        absl::StatusOr<torch::Tensor> t = TakeTensor(
            *tensors, LoraFactorKey(i, module, which), want, weights_path);
        if (!t.ok()) {
          return InputError(
              name_,
              absl::StrCat(t.status().message(), " (base weight \"", weight,
                           "\" is ", ShapeText(shape->second), ")"));
        }
        *target = std::move(*t);
      }
      factors_[weight] = std::move(f);
    }
  }
  if (!tensors->empty()) {
    return InputError(name_,
                      absl::StrCat(weights_path, ": unexpected tensor \"",
                                   tensors->begin()->first, "\""));
  }
  scale_ = LoraScale(*options);
  target_modules_ = options->target_modules;
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> MergeInput::TaskVector(
    const std::string& name, const torch::Tensor& theta_0) const {
  if (kind_ == Kind::kModel) {
    ASSIGN_OR_RETURN(torch::Tensor theta, weights_->Read(name));
    return theta.to(torch::kFloat64) - theta_0;
  }
  auto it = factors_.find(name);
  if (it == factors_.end()) return torch::zeros_like(theta_0);
  return scale_ * torch::matmul(it->second.b.to(torch::kFloat64),
                                it->second.a.to(torch::kFloat64));
}

}  // namespace lathe::engine
