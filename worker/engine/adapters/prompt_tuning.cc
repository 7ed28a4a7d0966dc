#include "worker/engine/adapters/prompt_tuning.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/adapters/peft_folder.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

using Json = nlohmann::json;

absl::Status AttachPromptTuning(LlamaModel& model, const PromptTuningSpec& spec,
                                const Tokenizer* tokenizer) {
  RETURN_IF_ERROR(Validate(AdapterSpec(spec)));
  const int64_t N = spec.num_virtual_tokens;
  const int64_t C = model.config().hidden_size;
  const torch::Tensor embed = model.Weights(false).at("model.embed_tokens.weight");
  torch::Tensor rows;
  if (spec.init == "random") {
    rows = torch::randn({N, C}, torch::kFloat32);
  } else {
    std::vector<int64_t> ids;
    if (spec.init == "sample_vocab") {
      rows = embed.index_select(
          0, torch::randint(0, embed.size(0), {N}, torch::kInt64)
                 .to(embed.device()));
    } else {
      if (tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "prompt tuning's text init needs the tokenizer");
      }
      ASSIGN_OR_RETURN(Encoding encoding,
                       tokenizer->EncodeWithSpecialTokens(spec.init_text));
      if (encoding.ids.empty()) {
        return absl::InvalidArgumentError(
            "field \"adapter.init_text\" has no token");
      }
      for (int64_t i = 0; i < N; ++i) {
        ids.push_back(encoding.ids[i % encoding.ids.size()]);
      }
      rows = embed.index_select(
          0, torch::tensor(ids, torch::kInt64).to(embed.device()));
    }
  }
  model.SetPromptEmbeddings(rows.detach()
                                .to(embed.device(), torch::kFloat32)
                                .clone()
                                .requires_grad_(true));
  return absl::OkStatus();
}

void PrependVirtualTokens(std::vector<Example>& examples, int n) {
  for (Example& e : examples) {
    e.ids.insert(e.ids.begin(), n, 0);
    e.loss_mask.insert(e.loss_mask.begin(), n, 0);
  }
}

absl::Status SavePromptTuning(const LlamaModel& model,
                              const PromptTuningSpec& spec,
                              const std::string& base_model_name,
                              const std::string& dir) {
  // PEFT's PromptTuningConfig fields (METHODS.md §10).
  const Json config = {
      {"peft_type", "PROMPT_TUNING"},
      {"task_type", "CAUSAL_LM"},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", base_model_name},
      {"revision", nullptr},
      {"inference_mode", true},
      {"num_virtual_tokens", spec.num_virtual_tokens},
      {"token_dim", model.config().hidden_size},
      {"num_transformer_submodules", 1},
      {"num_attention_heads", model.config().num_attention_heads},
      {"num_layers", static_cast<int64_t>(model.layers().size())},
      {"modules_to_save", nullptr},
      {"prompt_tuning_init", absl::AsciiStrToUpper(spec.init)},
      {"prompt_tuning_init_text",
       spec.init == "text" ? Json(spec.init_text) : Json(nullptr)},
      {"tokenizer_name_or_path",
       spec.init == "text" ? Json(base_model_name) : Json(nullptr)},
      {"tokenizer_kwargs", nullptr},
  };
  return WritePeftFolder(dir, config,
                         {{"prompt_embeddings", model.prompt_embeddings()}});
}

absl::StatusOr<PromptTuningSpec> LoadPromptTuning(LlamaModel& model,
                                                  const std::string& dir) {
  ASSIGN_OR_RETURN(Json config, ReadPeftConfig(dir, "PROMPT_TUNING"));
  auto field_error = [&](const std::string& field, const std::string& problem) {
    return PeftConfigError(dir, field, problem);
  };
  if (!config.contains("num_virtual_tokens") ||
      !config["num_virtual_tokens"].is_number_integer() ||
      config["num_virtual_tokens"].get<int64_t>() < 1 ||
      config["num_virtual_tokens"].get<int64_t>() > 65536) {
    return field_error("num_virtual_tokens",
                       "must be an integer from 1 to 65536");
  }
  if (config.value("num_transformer_submodules", Json(1)) != Json(1)) {
    return field_error("num_transformer_submodules", "must be 1 (causal LM)");
  }
  PromptTuningSpec spec;
  spec.num_virtual_tokens = config["num_virtual_tokens"].get<int>();
  const std::string weights_path = dir + "/adapter_model.safetensors";
  ASSIGN_OR_RETURN(TensorMap tensors, LoadSafetensors(weights_path));
  ASSIGN_OR_RETURN(torch::Tensor rows,
                   TakeTensor(tensors, "prompt_embeddings",
                              {spec.num_virtual_tokens,
                               model.config().hidden_size},
                              weights_path));
  if (!tensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        weights_path, ": unexpected tensor \"", tensors.begin()->first, "\""));
  }
  model.SetPromptEmbeddings(rows.to(model.device()));
  return spec;
}

}  // namespace lathe::engine
