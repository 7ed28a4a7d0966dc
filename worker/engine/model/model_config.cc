#include "worker/engine/model/model_config.h"

#include <cctype>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& problem) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": field \"", field, "\" ", problem));
}

// The positive integer `field`, or `fallback` when absent or null and
// fallback > 0.
absl::StatusOr<int64_t> PositiveInt(const Json& config,
                                    const std::string& field,
                                    const std::string& source,
                                    int64_t fallback = 0) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) {
    if (fallback > 0) return fallback;
    return FieldError(source, field, "is missing");
  }
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return FieldError(
        source, field,
        absl::StrCat("must be a positive integer, got ", it->dump()));
  }
  return it->get<int64_t>();
}

absl::StatusOr<double> Number(const Json& config, const std::string& field,
                              const std::string& source, double fallback) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_number() || it->get<double>() <= 0) {
    return FieldError(
        source, field,
        absl::StrCat("must be a positive number, got ", it->dump()));
  }
  return it->get<double>();
}

absl::StatusOr<bool> Bool(const Json& config, const std::string& field,
                          const std::string& source, bool fallback) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return FieldError(source, field,
                      absl::StrCat("must be true or false, got ", it->dump()));
  }
  return it->get<bool>();
}

absl::Status ParseArchitecture(const Json& config, const std::string& source,
                               ModelConfig& out) {
  static const std::set<std::string> kTypes = {"llama", "mistral", "qwen2"};
  static const std::set<std::string> kArchitectures = {
      "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};
  auto type = config.find("model_type");
  if (type == config.end() || !type->is_string()) {
    return FieldError(source, "model_type", "is missing");
  }
  out.model_type = type->get<std::string>();
  if (!kTypes.contains(out.model_type)) {
    return FieldError(source, "model_type",
                      absl::StrCat("is \"", out.model_type,
                                   "\"; supported: llama, mistral, qwen2"));
  }
  auto architectures = config.find("architectures");
  if (architectures != config.end() && !architectures->is_null()) {
    if (!architectures->is_array()) {
      return FieldError(source, "architectures", "must be a list of strings");
    }
    for (const Json& a : *architectures) {
      if (!a.is_string() || !kArchitectures.contains(a.get<std::string>())) {
        return FieldError(
            source, "architectures",
            absl::StrCat("holds unsupported architecture ", a.dump(),
                         "; supported: LlamaForCausalLM, "
                         "MistralForCausalLM, Qwen2ForCausalLM"));
      }
    }
  }
  auto act = config.find("hidden_act");
  if (act != config.end() && *act != "silu") {
    return FieldError(
        source, "hidden_act",
        absl::StrCat("is ", act->dump(), "; only \"silu\" is supported"));
  }
  ASSIGN_OR_RETURN(bool mlp_bias, Bool(config, "mlp_bias", source, false));
  if (mlp_bias) return FieldError(source, "mlp_bias", "true is not supported");
  return absl::OkStatus();
}

absl::Status ParseRopeScaling(const Json& config, const std::string& source,
                              ModelConfig& out) {
  auto it = config.find("rope_scaling");
  if (it == config.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return FieldError(source, "rope_scaling", "must be an object or null");
  }
  // Newer configs call it "rope_type", older ones "type".
  auto type_field = it->find("rope_type");
  if (type_field == it->end()) type_field = it->find("type");
  if (type_field != it->end() && !type_field->is_string()) {
    return FieldError(
        source, "rope_scaling",
        absl::StrCat("has rope_type ", type_field->dump(), ", not a string"));
  }
  const std::string type =
      type_field == it->end() ? "" : type_field->get<std::string>();
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return FieldError(source, "rope_scaling",
                      absl::StrCat("has unsupported rope_type \"", type,
                                   "\"; supported: default, llama3"));
  }
  const std::string field = "rope_scaling";
  ASSIGN_OR_RETURN(out.rope_scaling.factor, Number(*it, "factor", source, 0));
  ASSIGN_OR_RETURN(out.rope_scaling.low_freq_factor,
                   Number(*it, "low_freq_factor", source, 1));
  ASSIGN_OR_RETURN(out.rope_scaling.high_freq_factor,
                   Number(*it, "high_freq_factor", source, 4));
  ASSIGN_OR_RETURN(
      out.rope_scaling.original_max_position,
      PositiveInt(*it, "original_max_position_embeddings", source));
  if (out.rope_scaling.factor <= 0 ||
      out.rope_scaling.high_freq_factor <= out.rope_scaling.low_freq_factor) {
    return FieldError(
        source, field,
        "needs factor > 0 and high_freq_factor > low_freq_factor");
  }
  return absl::OkStatus();
}

// Whether `name` is a Hub model id of the form "owner/name": each part of
// letters, digits, '-', '_' and '.', starting and ending with a letter,
// digit or '_', with no "--" or ".." (the Hub's rule), the name at most 96
// characters. A path ("/models/x", "./x", "~/x", "a/b/c") is not.
bool IsHubId(const std::string& name) {
  const size_t slash = name.find('/');
  if (slash == std::string::npos || name.find('/', slash + 1) != name.npos ||
      name.find("--") != name.npos || name.find("..") != name.npos ||
      name.size() - slash - 1 > 96) {
    return false;
  }
  auto word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  };
  for (const std::string part :
       {name.substr(0, slash), name.substr(slash + 1)}) {
    if (part.empty() || !word(part.front()) || !word(part.back())) return false;
    for (char c : part) {
      if (!word(c) && c != '-' && c != '.') return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const Json& config,
                                             const std::string& source) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " is not a JSON object"));
  }
  ModelConfig out;
  RETURN_IF_ERROR(ParseArchitecture(config, source, out));
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "hidden_size", source));
  ASSIGN_OR_RETURN(out.intermediate_size,
                   PositiveInt(config, "intermediate_size", source));
  ASSIGN_OR_RETURN(out.num_hidden_layers,
                   PositiveInt(config, "num_hidden_layers", source));
  ASSIGN_OR_RETURN(out.num_attention_heads,
                   PositiveInt(config, "num_attention_heads", source));
  ASSIGN_OR_RETURN(out.num_key_value_heads,
                   PositiveInt(config, "num_key_value_heads", source,
                               out.num_attention_heads));
  if (out.num_attention_heads % out.num_key_value_heads != 0) {
    return FieldError(source, "num_key_value_heads",
                      absl::StrCat("(", out.num_key_value_heads,
                                   ") must divide num_attention_heads (",
                                   out.num_attention_heads, ")"));
  }
  if (!config.contains("head_dim") &&
      out.hidden_size % out.num_attention_heads != 0) {
    return FieldError(source, "hidden_size",
                      "must be a multiple of num_attention_heads when "
                      "head_dim is absent");
  }
  ASSIGN_OR_RETURN(out.head_dim,
                   PositiveInt(config, "head_dim", source,
                               out.hidden_size / out.num_attention_heads));
  if (out.head_dim % 2 != 0) {
    return FieldError(source, "head_dim", "must be even for rotary embeddings");
  }
  ASSIGN_OR_RETURN(out.vocab_size, PositiveInt(config, "vocab_size", source));
  ASSIGN_OR_RETURN(out.rms_norm_eps,
                   Number(config, "rms_norm_eps", source, 1e-6));
  ASSIGN_OR_RETURN(out.rope_theta,
                   Number(config, "rope_theta", source, 10000.0));
  RETURN_IF_ERROR(ParseRopeScaling(config, source, out));
  ASSIGN_OR_RETURN(out.tie_word_embeddings,
                   Bool(config, "tie_word_embeddings", source, false));
  ASSIGN_OR_RETURN(bool attention_bias,
                   Bool(config, "attention_bias", source, false));
  out.qkv_bias = attention_bias || out.model_type == "qwen2";
  out.o_bias = attention_bias && out.model_type != "qwen2";
  auto name = config.find("_name_or_path");
  if (name != config.end() && name->is_string() &&
      IsHubId(name->get<std::string>())) {
    out.hub_name = name->get<std::string>();
  }
  return out;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  ASSIGN_OR_RETURN(Json config, ReadJsonFile(path));
  return ParseModelConfig(config, path);
}

}  // namespace lathe::engine
