#include "worker/engine/merge/merge.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/adapters/peft_folder.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/merge/merge_tensor.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/model_export.h"

namespace lathe::engine {
namespace {

absl::Status OptionsError(const std::string& field, const std::string& text) {
  return WithErrorKind(absl::InvalidArgumentError(text),
                       ErrorKind::kUserOptions, field);
}

// The export's projections: spec.lora.target_modules, else the union of the
// LoRA inputs' (in the model's projection order).
absl::StatusOr<LoraTargets> ResolveLoraTargets(
    const MergeSpec& spec,
    const std::vector<std::unique_ptr<MergeInput>>& inputs) {
  LoraTargets targets;
  if (spec.lora.dir.empty()) return targets;
  targets.rank = spec.lora.rank;
  targets.modules = spec.lora.target_modules;
  if (targets.modules.empty()) {
    for (const char* module : kProjectionNames) {
      for (const auto& input : inputs) {
        const auto& m = input->target_modules();
        if (std::find(m.begin(), m.end(), module) != m.end()) {
          targets.modules.push_back(module);
          break;
        }
      }
    }
  }
  if (targets.modules.empty()) {
    return OptionsError("merge.lora.target_modules",
                        "field \"merge.lora.target_modules\" is required when "
                        "no input is a LoRA adapter");
  }
  return targets;
}

// The output must not overwrite a folder the merge is reading.
absl::Status CheckOutputDirs(const MergeSpec& spec) {
  namespace fs = std::filesystem;
  std::vector<std::string> read = {spec.base_dir};
  for (const MergeInputSpec& input : spec.inputs) read.push_back(input.dir);
  for (const auto& [field, out] :
       {std::pair{"merge.output_dir", spec.output_dir},
        std::pair{"merge.lora.dir", spec.lora.dir}}) {
    if (out.empty()) continue;
    for (const std::string& dir : read) {
      std::error_code error;
      if (fs::weakly_canonical(out, error) ==
          fs::weakly_canonical(dir, error)) {
        return OptionsError(field,
                            absl::StrCat("field \"", field, "\" ", out,
                                         " is a folder the merge reads"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<const MergeInput*> Pick(
    const std::vector<std::unique_ptr<MergeInput>>& inputs,
    const std::vector<int>& which) {
  std::vector<const MergeInput*> out;
  for (int i : which) out.push_back(inputs[i].get());
  return out;
}

absl::StatusOr<MergeResult> RunMergeMayThrow(const MergeSpec& spec,
                                             const MergeHooks& hooks) {
  if (absl::Status valid = Validate(spec); !valid.ok()) {
    return WithErrorKind(valid, ErrorKind::kUserOptions, "merge");
  }
  RETURN_IF_ERROR(CheckOutputDirs(spec));
  ASSIGN_OR_RETURN(std::unique_ptr<MergeBase> base,
                   MergeBase::Open(spec.base_dir));
  std::vector<std::unique_ptr<MergeInput>> inputs;
  for (const MergeInputSpec& input : spec.inputs) {
    ASSIGN_OR_RETURN(inputs.emplace_back(), MergeInput::Open(input, *base));
  }
  ASSIGN_OR_RETURN(const LoraTargets targets, ResolveLoraTargets(spec, inputs));

  MergeResult result;
  std::vector<double> weights = InputWeights(spec);
  result.merged_inputs.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) result.merged_inputs[i] = i;
  if (spec.params.method == MergeMethod::kGreedySoup) {
    ASSIGN_OR_RETURN(std::unique_ptr<ValidationScorer> scorer,
                     ValidationScorer::Create(spec.soup, *base));
    auto evaluate =
        [&](const std::vector<int>& soup) -> absl::StatusOr<double> {
      ASSIGN_OR_RETURN(MergedWeights merged,
                       MergeWeights(*base, Pick(inputs, soup),
                                    std::vector<double>(soup.size(), 1.0),
                                    spec.params, LoraTargets{}, nullptr));
      return scorer->Loss(merged.model);
    };
    auto on_step = [&](const SoupStep& step) {
      if (step.phase == SoupStep::Phase::kTried) {
        result.validation_loss = step.best_loss;
      }
      if (hooks.on_soup_step) hooks.on_soup_step(step);
    };
    ASSIGN_OR_RETURN(
        result.merged_inputs,
        SelectGreedySoup(static_cast<int>(inputs.size()), evaluate, on_step));
    weights.assign(result.merged_inputs.size(), 1.0);
  }

  ASSIGN_OR_RETURN(
      MergedWeights merged,
      MergeWeights(*base, Pick(inputs, result.merged_inputs), weights,
                   spec.params, targets, hooks.on_tensor));
  result.tensors = static_cast<int64_t>(merged.model.size());
  RETURN_IF_ERROR(CopyModelFolderFiles(spec.base_dir, spec.output_dir));
  RETURN_IF_ERROR(SaveSafetensors(spec.output_dir + "/model.safetensors",
                                  merged.model, {{"format", "pt"}},
                                  base->dtype()));
  if (targets.rank > 0) {
    LoraSpec lora;
    lora.rank = targets.rank;
    lora.alpha = targets.rank;  // scale 1: B A is the merged delta
    lora.target_modules = targets.modules;
    const ModelSpec model_spec = {.dir = spec.base_dir,
                                  .base_model_name = spec.base_model_name};
    RETURN_IF_ERROR(WritePeftFolder(
        spec.lora.dir,
        LoraConfigJson(lora, AdapterBaseName(model_spec, base->config())),
        merged.lora));
    if (!merged.lora_dropped.empty()) {
      spdlog::warn(
          "merge: the LoRA adapter leaves out the change to {} tensors "
          "outside its target modules (the first: {}); the merged model "
          "folder has it",
          merged.lora_dropped.size(), merged.lora_dropped.front());
    }
    result.lora_target_modules = targets.modules;
    result.lora_dropped = std::move(merged.lora_dropped);
  }
  return result;
}

}  // namespace

absl::StatusOr<MergedWeights> MergeWeights(
    const MergeBase& base, const std::vector<const MergeInput*>& inputs,
    const std::vector<double>& weights, const MergeParams& params,
    const LoraTargets& lora, const TensorProgress& on_tensor) {
  const int num_layers = static_cast<int>(base.config().num_hidden_layers);
  // Weight name -> (layer, module) of each projection that gets factors.
  std::map<std::string, std::pair<int, std::string>> factored;
  for (int l = 0; lora.rank > 0 && l < num_layers; ++l) {
    for (const std::string& module : lora.modules) {
      const std::string name = ProjectionWeightName(l, module);
      if (!base.shapes().contains(name)) {
        return OptionsError("merge.lora.target_modules",
                            absl::StrCat("the base has no \"", name, "\""));
      }
      factored[name] = {l, module};
    }
  }
  MergedWeights out;
  const int64_t total = static_cast<int64_t>(base.shapes().size());
  int64_t done = 0;
  for (const auto& [name, shape] : base.shapes()) {
    ASSIGN_OR_RETURN(const torch::Tensor theta_0, base.Read(name));
    const torch::Tensor theta_0_64 = theta_0.to(torch::kFloat64);
    std::vector<torch::Tensor> taus;
    for (const MergeInput* input : inputs) {
      ASSIGN_OR_RETURN(taus.emplace_back(),
                       input->TaskVector(name, theta_0_64));
    }
    const TensorSite site = {
        .name = name, .layer = LayerOfWeight(name), .num_layers = num_layers};
    const torch::Tensor tau = MergeTaskVectors(params, weights, taus, site);
    out.model[name] = (theta_0_64 + tau).to(base.dtype());
    if (auto it = factored.find(name); it != factored.end()) {
      LowRankFactors f = FactorizeLowRank(tau, lora.rank);
      const auto& [layer, module] = it->second;
      out.lora[LoraFactorKey(layer, module, "lora_A")] = std::move(f.a);
      out.lora[LoraFactorKey(layer, module, "lora_B")] = std::move(f.b);
    } else if (lora.rank > 0 && tau.ne(0).any().item<bool>()) {
      out.lora_dropped.push_back(name);
    }
    if (on_tensor) on_tensor(++done, total, name);
  }
  return out;
}

absl::StatusOr<MergeResult> RunMerge(const MergeSpec& spec,
                                     const MergeHooks& hooks) {
  try {
    return RunMergeMayThrow(spec, hooks);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("merge failed: ", e.what_without_backtrace()));
  }
}

}  // namespace lathe::engine
