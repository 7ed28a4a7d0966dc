#include "worker/engine/train_spec.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// Reads spec[field] into *out when present, checking its JSON type.
template <typename T>
absl::Status Read(const Json& spec, const std::string& field, T* out) {
  auto it = spec.find(field);
  if (it == spec.end()) return absl::OkStatus();
  bool ok;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = it->is_string();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    ok = it->is_array() &&
         std::all_of(it->begin(), it->end(),
                     [](const Json& v) { return v.is_string(); });
  } else if constexpr (std::is_same_v<T, bool>) {
    ok = it->is_boolean();
  } else if constexpr (std::is_floating_point_v<T>) {
    ok = it->is_number();
  } else {
    ok = it->is_number_integer() && (std::is_signed_v<T> || *it >= 0);
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec field \"", field, "\" has the wrong type: ", it->dump()));
  }
  *out = it->get<T>();
  return absl::OkStatus();
}

absl::Status CheckKnown(const Json& spec, const std::vector<std::string>& known,
                        const std::string& prefix) {
  for (const auto& [key, value] : spec.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown spec field \"", prefix, key, "\""));
    }
  }
  return absl::OkStatus();
}

std::string Resolve(const std::string& path, const std::string& base_dir) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

}  // namespace

absl::StatusOr<TrainOptions> ParseTrainSpec(const Json& spec,
                                            const std::string& base_dir) {
  if (!spec.is_object()) {
    return absl::InvalidArgumentError("the spec is not a JSON object");
  }
  RETURN_IF_ERROR(CheckKnown(spec,
                             {"model_dir",
                              "base_model_name",
                              "training_file",
                              "validation_file",
                              "training_file_name",
                              "validation_file_name",
                              "method",
                              "output_dir",
                              "merge_output_dir",
                              "n_epochs",
                              "batch_size",
                              "gradient_accumulation_steps",
                              "learning_rate",
                              "warmup_steps",
                              "lr_scheduler",
                              "weight_decay",
                              "max_grad_norm",
                              "max_seq_len",
                              "seed",
                              "chat_template",
                              "eval_every",
                              "checkpoint_every",
                              "checkpoint_dir",
                              "resume_from",
                              "packing",
                              "activation_checkpointing",
                              "loss_chunk_tokens",
                              "lora"},
                             ""));
  TrainOptions o;
  RETURN_IF_ERROR(Read(spec, "model_dir", &o.model_dir));
  RETURN_IF_ERROR(Read(spec, "base_model_name", &o.base_model_name));
  RETURN_IF_ERROR(Read(spec, "training_file", &o.training_file));
  RETURN_IF_ERROR(Read(spec, "validation_file", &o.validation_file));
  RETURN_IF_ERROR(Read(spec, "training_file_name", &o.training_file_name));
  RETURN_IF_ERROR(Read(spec, "validation_file_name", &o.validation_file_name));
  RETURN_IF_ERROR(Read(spec, "method", &o.method));
  RETURN_IF_ERROR(Read(spec, "output_dir", &o.output_dir));
  RETURN_IF_ERROR(Read(spec, "merge_output_dir", &o.merge_output_dir));
  RETURN_IF_ERROR(Read(spec, "n_epochs", &o.n_epochs));
  RETURN_IF_ERROR(Read(spec, "batch_size", &o.batch_size));
  RETURN_IF_ERROR(Read(spec, "gradient_accumulation_steps",
                       &o.gradient_accumulation_steps));
  RETURN_IF_ERROR(Read(spec, "learning_rate", &o.learning_rate));
  RETURN_IF_ERROR(Read(spec, "warmup_steps", &o.warmup_steps));
  RETURN_IF_ERROR(Read(spec, "lr_scheduler", &o.lr_scheduler));
  RETURN_IF_ERROR(Read(spec, "weight_decay", &o.weight_decay));
  RETURN_IF_ERROR(Read(spec, "max_grad_norm", &o.max_grad_norm));
  RETURN_IF_ERROR(Read(spec, "max_seq_len", &o.max_seq_len));
  RETURN_IF_ERROR(Read(spec, "seed", &o.seed));
  RETURN_IF_ERROR(Read(spec, "chat_template", &o.chat_template));
  RETURN_IF_ERROR(Read(spec, "eval_every", &o.eval_every));
  RETURN_IF_ERROR(Read(spec, "checkpoint_every", &o.checkpoint_every));
  RETURN_IF_ERROR(Read(spec, "checkpoint_dir", &o.checkpoint_dir));
  RETURN_IF_ERROR(Read(spec, "resume_from", &o.resume_from));
  RETURN_IF_ERROR(Read(spec, "packing", &o.packing));
  RETURN_IF_ERROR(
      Read(spec, "activation_checkpointing", &o.activation_checkpointing));
  RETURN_IF_ERROR(Read(spec, "loss_chunk_tokens", &o.loss_chunk_tokens));
  if (auto lora = spec.find("lora"); lora != spec.end()) {
    if (!lora->is_object()) {
      return absl::InvalidArgumentError(
          "spec field \"lora\" must be an object");
    }
    RETURN_IF_ERROR(CheckKnown(
        *lora, {"rank", "alpha", "dropout", "use_rslora", "target_modules"},
        "lora."));
    RETURN_IF_ERROR(Read(*lora, "rank", &o.lora.rank));
    RETURN_IF_ERROR(Read(*lora, "alpha", &o.lora.alpha));
    RETURN_IF_ERROR(Read(*lora, "dropout", &o.lora.dropout));
    RETURN_IF_ERROR(Read(*lora, "use_rslora", &o.lora.use_rslora));
    RETURN_IF_ERROR(Read(*lora, "target_modules", &o.lora.target_modules));
  }
  o.model_dir = Resolve(o.model_dir, base_dir);
  o.training_file = Resolve(o.training_file, base_dir);
  o.validation_file = Resolve(o.validation_file, base_dir);
  o.output_dir = Resolve(o.output_dir, base_dir);
  o.merge_output_dir = Resolve(o.merge_output_dir, base_dir);
  o.checkpoint_dir = Resolve(o.checkpoint_dir, base_dir);
  o.resume_from = Resolve(o.resume_from, base_dir);
  return o;
}

Json TrainSpecJson(const TrainOptions& o) {
  return {
      {"model_dir", o.model_dir},
      {"base_model_name", o.base_model_name},
      {"training_file", o.training_file},
      {"validation_file", o.validation_file},
      {"training_file_name", o.training_file_name},
      {"validation_file_name", o.validation_file_name},
      {"method", o.method},
      {"output_dir", o.output_dir},
      {"merge_output_dir", o.merge_output_dir},
      {"n_epochs", o.n_epochs},
      {"batch_size", o.batch_size},
      {"gradient_accumulation_steps", o.gradient_accumulation_steps},
      {"learning_rate", o.learning_rate},
      {"warmup_steps", o.warmup_steps},
      {"lr_scheduler", o.lr_scheduler},
      {"weight_decay", o.weight_decay},
      {"max_grad_norm", o.max_grad_norm},
      {"max_seq_len", o.max_seq_len},
      {"seed", o.seed},
      {"chat_template", o.chat_template},
      {"eval_every", o.eval_every},
      {"checkpoint_every", o.checkpoint_every},
      {"checkpoint_dir", o.checkpoint_dir},
      {"resume_from", o.resume_from},
      {"packing", o.packing},
      {"activation_checkpointing", o.activation_checkpointing},
      {"loss_chunk_tokens", o.loss_chunk_tokens},
      {"lora",
       {{"rank", o.lora.rank},
        {"alpha", o.lora.alpha},
        {"dropout", o.lora.dropout},
        {"use_rslora", o.lora.use_rslora},
        {"target_modules", o.lora.target_modules}}},
  };
}

}  // namespace lathe::engine
