#include "worker/engine/spec/run_spec.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/layer_ranges.h"
#include "common/status_macros.h"
#include "worker/engine/data/rft.h"
#include "worker/engine/model/model_config.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

absl::Status Invalid(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError(
      absl::StrCat("field \"", field, "\" ", rule));
}

// The one field list of each section: Fields(section, f) calls
// f(name, member) for every field. ToJson, FromJson and the unknown-field
// check are all written from it.
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, ModelSpec> {
  f("dir", s.dir);
  f("base_model_name", s.base_model_name);
  f("chat_template", s.chat_template);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, DataSpec> {
  f("training_file", s.training_file);
  f("validation_file", s.validation_file);
  f("training_file_name", s.training_file_name);
  f("validation_file_name", s.validation_file_name);
  f("batch_size", s.batch_size);
  f("max_seq_len", s.max_seq_len);
  f("packing", s.packing);
  f("mixture", s.mixture);
  f("stages", s.stages);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, StageSpec> {
  f("name", s.name);
  f("mixture", s.mixture);
  f("n_epochs", s.n_epochs);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, MixtureSpec> {
  f("sources", s.sources);
  f("strategy", s.strategy);
  f("temperature", s.temperature);
  f("stop", s.stop);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, MixtureSourceSpec> {
  f("name", s.name);
  f("file", s.file);
  f("file_name", s.file_name);
  f("validation_file", s.validation_file);
  f("validation_file_name", s.validation_file_name);
  f("weight", s.weight);
  f("proportion", s.proportion);
  f("fraction", s.fraction);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, LoraSpec> {
  f("rank", s.rank);
  f("alpha", s.alpha);
  f("dropout", s.dropout);
  f("use_rslora", s.use_rslora);
  f("target_modules", s.target_modules);
  f("use_dora", s.use_dora);
  f("layers_to_transform", s.layers_to_transform);
}
template <typename S, typename F>
void Fields(S&, F&&) requires std::is_same_v<std::remove_const_t<S>, FullSpec> {}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, PromptTuningSpec> {
  f("num_virtual_tokens", s.num_virtual_tokens);
  f("init", s.init);
  f("init_text", s.init_text);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, S2ftSpec> {
  f("d_ratio", s.d_ratio);
  f("u_ratio", s.u_ratio);
  f("o_ratio", s.o_ratio);
  f("v_ratio", s.v_ratio);
  f("seed", s.seed);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, LisaSpec> {
  f("activated_layers", s.activated_layers);
  f("interval_steps", s.interval_steps);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, HalfFtSpec> {
  f("reselect", s.reselect);
  f("seed", s.seed);
  f("fraction", s.fraction);
  f("include_embeddings", s.include_embeddings);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, TrainableSpec> {
  f("layers", s.layers);
  f("modules", s.modules);
  f("lisa", s.lisa);
  f("half_ft", s.half_ft);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, SftSpec> {
  f("loss_chunk_tokens", s.loss_chunk_tokens);
  f("masked_thought", s.masked_thought);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, MaskedThoughtSpec> {
  f("mask_rate", s.mask_rate);
  f("schedule", s.schedule);
  f("warmup_ratio", s.warmup_ratio);
  f("mask_token", s.mask_token);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, DpoSpec> {
  f("beta", s.beta);
  f("loss_type", s.loss_type);
  f("label_smoothing", s.label_smoothing);
  f("rpo_alpha", s.rpo_alpha);
  f("max_prompt_len", s.max_prompt_len);
  f("loss_chunk_tokens", s.loss_chunk_tokens);
  f("reference", s.reference);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, OrpoSpec> {
  f("lambda", s.lambda);
  f("max_prompt_len", s.max_prompt_len);
  f("loss_chunk_tokens", s.loss_chunk_tokens);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, OptimizerSpec> {
  f("learning_rate", s.learning_rate);
  f("weight_decay", s.weight_decay);
  f("max_grad_norm", s.max_grad_norm);
  f("gradient_accumulation_steps", s.gradient_accumulation_steps);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, ScheduleSpec> {
  f("n_epochs", s.n_epochs);
  f("warmup_steps", s.warmup_steps);
  f("lr_scheduler", s.lr_scheduler);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, CheckpointSpec> {
  f("every_steps", s.every_steps);
  f("dir", s.dir);
  f("resume_from", s.resume_from);
  f("at_end", s.at_end);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, DeviceSpec> {
  f("device", s.device);
  f("dtype", s.dtype);
  f("activation_checkpointing", s.activation_checkpointing);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, EvaluationSpec> {
  f("every_steps", s.every_steps);
  f("general_file", s.general_file);
  f("general_file_name", s.general_file_name);
  f("general_tokens", s.general_tokens);
  f("intruder_top_k", s.intruder_top_k);
  f("intruder_epsilon", s.intruder_epsilon);
  f("intruder_mitigation_lambda", s.intruder_mitigation_lambda);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, SelfTrainingSpec> {
  f("iterations", s.iterations);
  f("samples_per_prompt", s.samples_per_prompt);
  f("temperature", s.temperature);
  f("top_p", s.top_p);
  f("max_new_tokens", s.max_new_tokens);
  f("answer_extractor", s.answer_extractor);
  f("answer_pattern", s.answer_pattern);
  f("dedupe", s.dedupe);
  f("include_gold", s.include_gold);
  f("init", s.init);
  f("accumulate_previous", s.accumulate_previous);
}
template <typename S, typename F>
void Fields(S& s, F&& f) requires std::is_same_v<std::remove_const_t<S>, OutputSpec> {
  f("dir", s.dir);
  f("merged_dir", s.merged_dir);
}

// The section names, for errors.
template <typename S> constexpr const char* kName = "";
template <> constexpr const char* kName<ModelSpec> = "model";
template <> constexpr const char* kName<DataSpec> = "data";
template <> constexpr const char* kName<LoraSpec> = "adapter";
template <> constexpr const char* kName<FullSpec> = "adapter";
template <> constexpr const char* kName<PromptTuningSpec> = "adapter";
template <> constexpr const char* kName<TrainableSpec> = "trainable";
template <> constexpr const char* kName<LisaSpec> = "trainable.lisa";
template <> constexpr const char* kName<HalfFtSpec> = "trainable.half_ft";
template <> constexpr const char* kName<SftSpec> = "objective";
template <> constexpr const char* kName<DpoSpec> = "objective";
template <> constexpr const char* kName<OrpoSpec> = "objective";
template <> constexpr const char* kName<OptimizerSpec> = "optimizer";
template <> constexpr const char* kName<ScheduleSpec> = "schedule";
template <> constexpr const char* kName<CheckpointSpec> = "checkpoint";
template <> constexpr const char* kName<DeviceSpec> = "device";
template <> constexpr const char* kName<EvaluationSpec> = "evaluation";
template <> constexpr const char* kName<SelfTrainingSpec> = "self_training";
template <> constexpr const char* kName<OutputSpec> = "output";

// A section nested in another as an optional object ("trainable.lisa"):
// null or absent = not set.
template <typename T>
constexpr bool kIsNested = false;
template <typename S>
constexpr bool kIsNested<std::optional<S>> = true;
// Objects inside a section, with field lists of their own; and lists of
// them.
template <typename T> constexpr bool kNested = false;
template <> constexpr bool kNested<MaskedThoughtSpec> = true;
template <> constexpr bool kNested<MixtureSpec> = true;
template <> constexpr bool kNested<MixtureSourceSpec> = true;
template <> constexpr bool kNested<StageSpec> = true;
template <typename T> constexpr bool kNestedList = false;
template <typename T>
constexpr bool kNestedList<std::vector<T>> = kNested<T>;

template <typename T>
bool HasType(const Json& v) {
  if constexpr (kIsNested<T>) {
    return v.is_null() || v.is_object();
  } else if constexpr (std::is_same_v<T, std::vector<int>>) {
    return v.is_array() && std::all_of(v.begin(), v.end(), [](const Json& e) {
             return e.is_number_integer() &&
                    e >= std::numeric_limits<int>::min() &&
                    e <= std::numeric_limits<int>::max();
           });
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v.is_string();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    return v.is_array() && std::all_of(v.begin(), v.end(), [](const Json& e) {
             return e.is_string();
           });
  } else if constexpr (std::is_same_v<T, bool>) {
    return v.is_boolean();
  } else if constexpr (std::is_floating_point_v<T>) {
    return v.is_number();
  } else {
    return v.is_number_integer() && (std::is_signed_v<T> || v >= 0) &&
           (!std::is_same_v<T, int> ||
            (v >= std::numeric_limits<int>::min() &&
             v <= std::numeric_limits<int>::max()));
  }
}

template <typename S>
Json SectionToJson(const S& s) {
  Json json = Json::object();
  Fields(s, [&](const char* name, const auto& value) {
    using T = std::decay_t<decltype(value)>;
    if constexpr (kIsNested<T>) {
      json[name] = value.has_value() ? SectionToJson(*value) : Json(nullptr);
    } else if constexpr (kNested<T>) {
      json[name] = SectionToJson(value);
    } else if constexpr (kNestedList<T>) {
      json[name] = Json::array();
      for (const auto& e : value) json[name].push_back(SectionToJson(e));
    } else {
      json[name] = value;
    }
  });
  return json;
}

// Reads the fields of `json` into *s; `skip` is a key that is not a field
// (the variant's "type"); `section` is what errors call the object.
template <typename S>
absl::Status SectionFromJson(const Json& json, S* s, const char* skip = "",
                             const std::string& section = kName<S>) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec field \"", section, "\" must be an object"));
  }
  std::set<std::string> known = {skip};
  absl::Status status;
  Fields(*s, [&](const char* name, auto& value) {
    known.insert(name);
    auto it = json.find(name);
    if (!status.ok() || it == json.end()) return;
    using T = std::decay_t<decltype(value)>;
    const std::string field = absl::StrCat(section, ".", name);
    if constexpr (kNested<T>) {
      status = SectionFromJson(*it, &value, "", field);
    } else if constexpr (kNestedList<T>) {
      if (!it->is_array()) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "spec field \"", field, "\" has the wrong type: ", it->dump()));
        return;
      }
      value.clear();
      for (size_t i = 0; i < it->size() && status.ok(); ++i) {
        status = SectionFromJson((*it)[i], &value.emplace_back(), "",
                                 absl::StrCat(field, "[", i, "]"));
      }
    } else if constexpr (kIsNested<T>) {
      // An optional object: null or absent = not set.
      if (!HasType<T>(*it)) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "spec field \"", field, "\" has the wrong type: ", it->dump()));
        return;
      }
      value.reset();
      if (it->is_null()) return;
      status = SectionFromJson(*it, &value.emplace(), "", field);
    } else {
      if (!HasType<T>(*it)) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "spec field \"", field, "\" has the wrong type: ", it->dump()));
        return;
      }
      value = it->template get<T>();
    }
  });
  RETURN_IF_ERROR(status);
  for (const auto& [key, value] : json.items()) {
    if (!known.count(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown spec field \"", section, ".", key, "\""));
    }
  }
  return absl::OkStatus();
}

// {"type": "<name>", ...fields} for a variant section.
template <typename V>
absl::Status VariantFromJson(
    const Json& json, V* out, const char* section,
    const std::vector<std::pair<std::string, V>>& alternatives) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec field \"", section, "\" must be an object"));
  }
  std::string type = alternatives.front().first;
  if (auto it = json.find("type"); it != json.end()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec field \"", section, ".type\" has the wrong type: ",
          it->dump()));
    }
    type = it->template get<std::string>();
  }
  std::vector<std::string> names;
  for (const auto& [name, value] : alternatives) {
    names.push_back(name);
    if (name != type) continue;
    *out = value;
    return std::visit(
        [&](auto& alternative) {
          return SectionFromJson(json, &alternative, "type");
        },
        *out);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("spec field \"", section, ".type\" is \"", type,
                   "\"; known: ", absl::StrJoin(names, ", ")));
}

absl::Status Positive(const char* section, const char* field, double value) {
  if (value > 0) return absl::OkStatus();
  return Invalid(absl::StrCat(section, ".", field), "must be positive");
}
absl::Status NonNegative(const char* section, const char* field,
                         double value) {
  if (value >= 0) return absl::OkStatus();
  return Invalid(absl::StrCat(section, ".", field), "must be >= 0");
}

// `at_mixture`: its field, "data.mixture" or "data.stages[i].mixture".
absl::Status ValidateMixture(const MixtureSpec& m, const std::string& at_mixture) {
  if (m.sources.empty()) return absl::OkStatus();
  if (m.strategy != "concat" && m.strategy != "weighted" &&
      m.strategy != "temperature") {
    return Invalid(at_mixture + ".strategy",
                   absl::StrCat("is \"", m.strategy,
                                "\"; known: concat, weighted, temperature"));
  }
  if (!(m.temperature > 0 && std::isfinite(m.temperature))) {
    return Invalid(at_mixture + ".temperature", "must be positive");
  }
  if (m.stop != "first_exhausted" && m.stop != "all_exhausted") {
    return Invalid(at_mixture + ".stop",
                   absl::StrCat("is \"", m.stop,
                                "\"; known: first_exhausted, all_exhausted"));
  }
  double proportions = 0;
  bool drawn = false;
  std::set<std::string> names;
  for (size_t i = 0; i < m.sources.size(); ++i) {
    const MixtureSourceSpec& s = m.sources[i];
    const std::string at = absl::StrCat(at_mixture, ".sources[", i, "].");
    const bool name_ok =
        !s.name.empty() &&
        std::all_of(s.name.begin(), s.name.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                 c == '_' || c == '-';
        });
    if (!name_ok) {
      return Invalid(at + "name",
                     "is required: letters, digits, '.', '_' and '-'");
    }
    if (!names.insert(s.name).second) {
      return Invalid(at + "name", absl::StrCat("\"", s.name, "\" is repeated"));
    }
    if (s.file.empty()) return Invalid(at + "file", "is required");
    if (!(s.weight > 0 && std::isfinite(s.weight))) {
      return Invalid(at + "weight", "must be positive");
    }
    if (!(s.proportion >= 0 && s.proportion < 1)) {
      return Invalid(at + "proportion", "must be in [0, 1)");
    }
    if (!(s.fraction > 0 && s.fraction <= 1)) {
      return Invalid(at + "fraction", "must be in (0, 1]");
    }
    proportions += s.proportion;
    drawn = drawn || s.proportion == 0;
  }
  if (!drawn || proportions >= 1) {
    return Invalid(at_mixture + ".sources",
                   "need one source without a proportion, and proportions "
                   "summing below 1");
  }
  return absl::OkStatus();
}

// The legacy flat spec.json's fields and where they are now.
constexpr std::pair<const char*, const char*> kFlatFields[] = {
    {"model_dir", "model.dir"},
    {"base_model_name", "model.base_model_name"},
    {"chat_template", "model.chat_template"},
    {"training_file", "data.training_file"},
    {"validation_file", "data.validation_file"},
    {"training_file_name", "data.training_file_name"},
    {"validation_file_name", "data.validation_file_name"},
    {"batch_size", "data.batch_size"},
    {"max_seq_len", "data.max_seq_len"},
    {"packing", "data.packing"},
    {"method", "adapter.type"},
    {"lora", "adapter (with \"type\": \"lora\")"},
    {"loss_chunk_tokens", "objective.loss_chunk_tokens"},
    {"learning_rate", "optimizer.learning_rate"},
    {"weight_decay", "optimizer.weight_decay"},
    {"max_grad_norm", "optimizer.max_grad_norm"},
    {"gradient_accumulation_steps", "optimizer.gradient_accumulation_steps"},
    {"n_epochs", "schedule.n_epochs"},
    {"warmup_steps", "schedule.warmup_steps"},
    {"lr_scheduler", "schedule.lr_scheduler"},
    {"checkpoint_every", "checkpoint.every_steps"},
    {"checkpoint_dir", "checkpoint.dir"},
    {"resume_from", "checkpoint.resume_from"},
    {"activation_checkpointing", "device.activation_checkpointing"},
    {"eval_every", "evaluation.every_steps"},
    {"output_dir", "output.dir"},
    {"merge_output_dir", "output.merged_dir"},
};

std::string Resolve(const std::string& path, const std::string& base_dir) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

}  // namespace

std::string AdapterType(const AdapterSpec& adapter) {
  constexpr const char* kTypes[] = {"lora", "full", "prompt_tuning", "s2ft"};
  static_assert(std::variant_size_v<AdapterSpec> == std::size(kTypes));
  return kTypes[adapter.index()];
}

std::string ObjectiveType(const ObjectiveSpec& objective) {
  constexpr const char* kTypes[] = {"sft", "dpo", "orpo"};
  static_assert(std::variant_size_v<ObjectiveSpec> == std::size(kTypes));
  return kTypes[objective.index()];
}

std::string HyperparametersField(const ObjectiveSpec& objective) {
  const std::string type = ObjectiveType(objective);
  return absl::StrCat("method.", type == "sft" ? "supervised" : type,
                      ".hyperparameters");
}

bool IsPreference(const ObjectiveSpec& objective) {
  return !std::holds_alternative<SftSpec>(objective);
}

// ---- model
Json ToJson(const ModelSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, ModelSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const ModelSpec& s) {
  if (s.dir.empty()) return Invalid("model.dir", "is required");
  return absl::OkStatus();
}
void AddResumeKeys(const ModelSpec& s, Json* keys) {
  (*keys)["chat_template"] = s.chat_template;
}

// ---- data
namespace {

// A mixture's resume keys: what decides its draws, not its paths.
Json MixtureKeys(const MixtureSpec& m) {
  Json mixture = {{"strategy", m.strategy},
                  {"temperature", m.temperature},
                  {"stop", m.stop},
                  {"sources", Json::array()}};
  for (const MixtureSourceSpec& source : m.sources) {
    mixture["sources"].push_back({{"name", source.name},
                                  {"weight", source.weight},
                                  {"proportion", source.proportion},
                                  {"fraction", source.fraction}});
  }
  return mixture;
}

}  // namespace

Json ToJson(const DataSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, DataSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const DataSpec& s) {
  RETURN_IF_ERROR(ValidateMixture(s.mixture, "data.mixture"));
  if (!s.stages.empty()) {
    if (!s.training_file.empty() || !s.mixture.sources.empty()) {
      return Invalid(s.training_file.empty() ? "data.mixture" : "data.training_file",
                     "must be empty with data.stages (each stage has its "
                     "mixture)");
    }
    std::set<std::string> names;
    for (size_t i = 0; i < s.stages.size(); ++i) {
      const StageSpec& stage = s.stages[i];
      const std::string at = absl::StrCat("data.stages[", i, "]");
      if (stage.mixture.sources.empty()) {
        return Invalid(at + ".mixture.sources", "is required");
      }
      RETURN_IF_ERROR(ValidateMixture(stage.mixture, at + ".mixture"));
      if (stage.n_epochs < 0) return Invalid(at + ".n_epochs", "must be >= 0");
      const std::string name =
          stage.name.empty() ? absl::StrCat("stage-", i + 1) : stage.name;
      if (!names.insert(name).second) {
        return Invalid(at + ".name", absl::StrCat("\"", name, "\" is repeated"));
      }
    }
  } else if (!s.mixture.sources.empty() && !s.training_file.empty()) {
    return Invalid("data.training_file",
                   "must be empty with data.mixture.sources (list it as a "
                   "source)");
  }
  if (s.training_file.empty() && s.mixture.sources.empty() && s.stages.empty()) {
    return Invalid("data.training_file", "is required");
  }
  RETURN_IF_ERROR(Positive("data", "batch_size", s.batch_size));
  if (s.max_seq_len < 2) return Invalid("data.max_seq_len", "must be at least 2");
  return absl::OkStatus();
}
void AddResumeKeys(const DataSpec& s, Json* keys) {
  // Key names as before the spec had sections, so that older checkpoints
  // stay resumable.
  (*keys)["batch_size"] = s.batch_size;
  (*keys)["max_seq_len"] = s.max_seq_len;
  // The sources' contents are in the recipe's fingerprint; their paths may
  // differ on resume.
  if (!s.mixture.sources.empty()) (*keys)["mixture"] = MixtureKeys(s.mixture);
  for (const StageSpec& stage : s.stages) {
    (*keys)["stages"].push_back({{"name", stage.name},
                                 {"n_epochs", stage.n_epochs},
                                 {"mixture", MixtureKeys(stage.mixture)}});
  }
}

// ---- adapter
Json ToJson(const AdapterSpec& s) {
  Json json = std::visit([](const auto& a) { return SectionToJson(a); }, s);
  json["type"] = AdapterType(s);
  return json;
}
absl::Status FromJson(const Json& j, AdapterSpec* s) {
  return VariantFromJson<AdapterSpec>(
      j, s, "adapter",
      {{"lora", LoraSpec{}},
       {"full", FullSpec{}},
       {"prompt_tuning", PromptTuningSpec{}},
       {"s2ft", S2ftSpec{}}});
}
absl::Status Validate(const AdapterSpec& s) {
  if (const auto* s2 = std::get_if<S2ftSpec>(&s)) {
    for (const auto& [field, ratio] :
         {std::pair{"d_ratio", s2->d_ratio}, std::pair{"u_ratio", s2->u_ratio},
          std::pair{"o_ratio", s2->o_ratio}, std::pair{"v_ratio", s2->v_ratio}}) {
      if (!(ratio >= 0 && ratio <= 1)) {
        return Invalid(absl::StrCat("adapter.", field), "must be in [0, 1]");
      }
    }
    if (s2->d_ratio + s2->u_ratio + s2->o_ratio + s2->v_ratio == 0) {
      return Invalid("adapter.d_ratio",
                     "every ratio is 0: S²FT would train nothing (the "
                     "reference's LLaMA-3 setting is d_ratio 0.03)");
    }
    if (s2->seed < -1) {
      return Invalid("adapter.seed", "must be -1 (the run's seed) or at least 0");
    }
    return absl::OkStatus();
  }
  if (const auto* prompt = std::get_if<PromptTuningSpec>(&s)) {
    if (prompt->num_virtual_tokens < 1 || prompt->num_virtual_tokens > 1024) {
      return Invalid("adapter.num_virtual_tokens", "must be in 1..1024");
    }
    if (prompt->init != "random" && prompt->init != "text" &&
        prompt->init != "sample_vocab") {
      return Invalid("adapter.init",
                     absl::StrCat("is \"", prompt->init,
                                  "\"; known: random, text, sample_vocab"));
    }
    if ((prompt->init == "text") == prompt->init_text.empty()) {
      return Invalid("adapter.init_text", prompt->init == "text"
                                              ? "is required with init text"
                                              : "is for init text only");
    }
    return absl::OkStatus();
  }
  const LoraSpec* lora = Lora(s);
  if (lora == nullptr) return absl::OkStatus();
  RETURN_IF_ERROR(Positive("adapter", "rank", lora->rank));
  RETURN_IF_ERROR(Positive("adapter", "alpha", lora->alpha));
  if (!(lora->dropout >= 0 && lora->dropout < 1)) {
    return Invalid("adapter.dropout", "must be in [0, 1)");
  }
  if (lora->target_modules.empty()) {
    return Invalid("adapter.target_modules", "must not be empty");
  }
  std::set<std::string> seen;
  for (const std::string& module : lora->target_modules) {
    const bool known = std::any_of(
        std::begin(kProjectionNames), std::end(kProjectionNames),
        [&](const char* p) { return module == p; });
    if (!known || !seen.insert(module).second) {
      return Invalid("adapter.target_modules",
                     absl::StrCat(": \"", module,
                                  "\" is unknown or repeated; known: ",
                                  absl::StrJoin(kProjectionNames, ", ")));
    }
  }
  std::set<int> layers;
  for (int layer : lora->layers_to_transform) {
    if (layer < 0 || !layers.insert(layer).second) {
      return Invalid("adapter.layers_to_transform",
                     absl::StrCat(": layer ", layer, " is negative or repeated"));
    }
  }
  return absl::OkStatus();
}
void AddResumeKeys(const AdapterSpec& s, Json* keys) {
  (*keys)["method"] = AdapterType(s);
  if (const LoraSpec* lora = Lora(s)) {
    (*keys)["lora.rank"] = lora->rank;
    (*keys)["lora.alpha"] = lora->alpha;
    (*keys)["lora.dropout"] = lora->dropout;
    (*keys)["lora.use_rslora"] = lora->use_rslora;
    (*keys)["lora.target_modules"] = lora->target_modules;
    // Only when set, so that checkpoints from before these fields resume.
    if (lora->use_dora) (*keys)["lora.use_dora"] = true;
    if (!lora->layers_to_transform.empty()) {
      (*keys)["lora.layers_to_transform"] = lora->layers_to_transform;
    }
  }
  if (const auto* prompt = std::get_if<PromptTuningSpec>(&s)) {
    (*keys)["prompt_tuning.num_virtual_tokens"] = prompt->num_virtual_tokens;
    (*keys)["prompt_tuning.init"] = prompt->init;
    (*keys)["prompt_tuning.init_text"] = prompt->init_text;
  }
  if (const auto* s2 = std::get_if<S2ftSpec>(&s)) {
    (*keys)["s2ft.d_ratio"] = s2->d_ratio;
    (*keys)["s2ft.u_ratio"] = s2->u_ratio;
    (*keys)["s2ft.o_ratio"] = s2->o_ratio;
    (*keys)["s2ft.v_ratio"] = s2->v_ratio;
    (*keys)["s2ft.seed"] = s2->seed;
  }
}

// ---- trainable
Json ToJson(const TrainableSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, TrainableSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const TrainableSpec& s) {
  RETURN_IF_ERROR(CheckLayerRanges(s.layers, "field \"trainable.layers\""));
  std::set<std::string> seen;
  for (const std::string& module : s.modules) {
    std::vector<std::string> known(std::begin(kProjectionNames),
                                   std::end(kProjectionNames));
    known.insert(known.end(), {"self_attn", "mlp", "input_layernorm",
                               "post_attention_layernorm"});
    if (std::find(known.begin(), known.end(), module) == known.end() ||
        !seen.insert(module).second) {
      return Invalid("trainable.modules",
                     absl::StrCat(": \"", module,
                                  "\" is unknown or repeated; known: ",
                                  absl::StrJoin(known, ", ")));
    }
  }
  const bool by_name = !s.layers.empty() || !s.modules.empty();
  if (s.lisa) {
    if (by_name || s.half_ft) {
      return Invalid("trainable.lisa",
                     "draws its own layers: it cannot be combined with "
                     "trainable.layers, trainable.modules or "
                     "trainable.half_ft");
    }
    RETURN_IF_ERROR(Positive("trainable.lisa", "activated_layers",
                             s.lisa->activated_layers));
    RETURN_IF_ERROR(
        Positive("trainable.lisa", "interval_steps", s.lisa->interval_steps));
  }
  if (s.half_ft) {
    if (by_name) {
      return Invalid("trainable.half_ft",
                     "draws its own half of every layer: it cannot be "
                     "combined with trainable.layers or trainable.modules");
    }
    if (s.half_ft->reselect != "stage" && s.half_ft->reselect != "epoch") {
      return Invalid("trainable.half_ft.reselect",
                     absl::StrCat("is \"", s.half_ft->reselect,
                                  "\"; known: stage, epoch"));
    }
    if (!(s.half_ft->fraction > 0 && s.half_ft->fraction <= 1)) {
      return Invalid("trainable.half_ft.fraction", "must be in (0, 1]");
    }
  }
  return absl::OkStatus();
}
void AddResumeKeys(const TrainableSpec& s, Json* keys) {
  // What is trained decides the state; a run without a selection adds no
  // key, so that older checkpoints stay resumable.
  if (s.Selects()) (*keys)["trainable"] = ToJson(s);
}

// ---- objective
Json ToJson(const ObjectiveSpec& s) {
  Json json = std::visit([](const auto& o) { return SectionToJson(o); }, s);
  json["type"] = ObjectiveType(s);
  return json;
}
absl::Status FromJson(const Json& j, ObjectiveSpec* s) {
  return VariantFromJson<ObjectiveSpec>(
      j, s, "objective",
      {{"sft", SftSpec{}}, {"dpo", DpoSpec{}}, {"orpo", OrpoSpec{}}});
}
absl::Status Validate(const ObjectiveSpec& s) {
  if (const auto* dpo = std::get_if<DpoSpec>(&s)) {
    if (!(dpo->beta > 0 && dpo->beta <= 2)) {
      return Invalid("objective.beta", "must be in (0, 2]");
    }
    if (dpo->loss_type != "sigmoid" && dpo->loss_type != "robust" &&
        dpo->loss_type != "hinge" && dpo->loss_type != "ipo") {
      return Invalid("objective.loss_type",
                     absl::StrCat("is \"", dpo->loss_type,
                                  "\"; known: sigmoid, robust, hinge, ipo"));
    }
    if (!(dpo->label_smoothing >= 0 && dpo->label_smoothing < 0.5)) {
      return Invalid("objective.label_smoothing", "must be in [0, 0.5)");
    }
    if (dpo->label_smoothing > 0 && dpo->loss_type != "sigmoid" &&
        dpo->loss_type != "robust") {
      return Invalid("objective.label_smoothing",
                     "is for loss_type sigmoid and robust only");
    }
    RETURN_IF_ERROR(NonNegative("objective", "rpo_alpha", dpo->rpo_alpha));
    RETURN_IF_ERROR(Positive("objective", "max_prompt_len",
                             dpo->max_prompt_len));
    if (dpo->reference != "auto" && dpo->reference != "precomputed") {
      return Invalid("objective.reference",
                     absl::StrCat("is \"", dpo->reference,
                                  "\"; known: auto, precomputed"));
    }
    return Positive("objective", "loss_chunk_tokens", dpo->loss_chunk_tokens);
  }
  if (const auto* orpo = std::get_if<OrpoSpec>(&s)) {
    RETURN_IF_ERROR(Positive("objective", "lambda", orpo->lambda));
    RETURN_IF_ERROR(Positive("objective", "max_prompt_len",
                             orpo->max_prompt_len));
    return Positive("objective", "loss_chunk_tokens", orpo->loss_chunk_tokens);
  }
  const SftSpec& sft = std::get<SftSpec>(s);
  RETURN_IF_ERROR(
      Positive("objective", "loss_chunk_tokens", sft.loss_chunk_tokens));
  const MaskedThoughtSpec& mt = sft.masked_thought;
  if (!(mt.mask_rate >= 0 && mt.mask_rate <= 1)) {
    return Invalid("objective.masked_thought.mask_rate", "must be in [0, 1]");
  }
  if (mt.schedule != "linear_warmup" && mt.schedule != "constant") {
    return Invalid("objective.masked_thought.schedule",
                   absl::StrCat("is \"", mt.schedule,
                                "\"; known: linear_warmup, constant"));
  }
  if (!(mt.warmup_ratio > 0 && mt.warmup_ratio <= 1)) {
    return Invalid("objective.masked_thought.warmup_ratio",
                   "must be in (0, 1]");
  }
  if (mt.mask_token != "pad" &&
      (mt.mask_token.empty() ||
       !std::all_of(mt.mask_token.begin(), mt.mask_token.end(),
                    [](char c) { return c >= '0' && c <= '9'; }) ||
       mt.mask_token.size() > 9)) {
    return Invalid("objective.masked_thought.mask_token",
                   absl::StrCat("is \"", mt.mask_token,
                                "\"; use \"pad\" or a token id"));
  }
  return absl::OkStatus();
}
void AddResumeKeys(const ObjectiveSpec& s, Json* keys) {
  // A checkpoint of one objective is not resumed by another; "sft" adds no
  // key, so that checkpoints older than the objectives stay resumable.
  if (ObjectiveType(s) != "sft") (*keys)["objective"] = ObjectiveType(s);
  // What defines the loss and the examples; loss_chunk_tokens only changes
  // how it is computed.
  if (const auto* dpo = std::get_if<DpoSpec>(&s)) {
    (*keys)["dpo.beta"] = dpo->beta;
    (*keys)["dpo.loss_type"] = dpo->loss_type;
    (*keys)["dpo.label_smoothing"] = dpo->label_smoothing;
    (*keys)["dpo.rpo_alpha"] = dpo->rpo_alpha;
    (*keys)["dpo.max_prompt_len"] = dpo->max_prompt_len;
    if (dpo->reference != "auto") (*keys)["dpo.reference"] = dpo->reference;
  }
  if (const auto* orpo = std::get_if<OrpoSpec>(&s)) {
    (*keys)["orpo.lambda"] = orpo->lambda;
    (*keys)["orpo.max_prompt_len"] = orpo->max_prompt_len;
  }
  // Masked Thought changes every step's inputs; off adds no key.
  if (const auto* sft = std::get_if<SftSpec>(&s);
      sft != nullptr && sft->masked_thought.mask_rate > 0) {
    (*keys)["masked_thought"] = SectionToJson(sft->masked_thought);
  }
}

// ---- optimizer
Json ToJson(const OptimizerSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, OptimizerSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const OptimizerSpec& s) {
  // 0 trains nothing: a baseline run (its reports measure the base alone).
  RETURN_IF_ERROR(NonNegative("optimizer", "learning_rate", s.learning_rate));
  RETURN_IF_ERROR(NonNegative("optimizer", "weight_decay", s.weight_decay));
  RETURN_IF_ERROR(Positive("optimizer", "max_grad_norm", s.max_grad_norm));
  return Positive("optimizer", "gradient_accumulation_steps",
                  s.gradient_accumulation_steps);
}
void AddResumeKeys(const OptimizerSpec& s, Json* keys) {
  (*keys)["gradient_accumulation_steps"] = s.gradient_accumulation_steps;
}

// ---- schedule
Json ToJson(const ScheduleSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, ScheduleSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const ScheduleSpec& s) {
  RETURN_IF_ERROR(Positive("schedule", "n_epochs", s.n_epochs));
  RETURN_IF_ERROR(NonNegative("schedule", "warmup_steps", s.warmup_steps));
  if (s.lr_scheduler != "linear" && s.lr_scheduler != "cosine" &&
      s.lr_scheduler != "constant") {
    return Invalid("schedule.lr_scheduler",
                   absl::StrCat("is \"", s.lr_scheduler,
                                "\"; known: linear, cosine, constant"));
  }
  return absl::OkStatus();
}
void AddResumeKeys(const ScheduleSpec& s, Json* keys) {
  (*keys)["n_epochs"] = s.n_epochs;
}

// ---- checkpoint
Json ToJson(const CheckpointSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, CheckpointSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const CheckpointSpec& s) {
  RETURN_IF_ERROR(NonNegative("checkpoint", "every_steps", s.every_steps));
  if (s.every_steps > 0 && s.dir.empty()) {
    return Invalid("checkpoint.dir", "is required with checkpoint.every_steps");
  }
  return absl::OkStatus();
}
void AddResumeKeys(const CheckpointSpec&, Json*) {}

// ---- device
Json ToJson(const DeviceSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, DeviceSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const DeviceSpec& s) {
  const bool cuda_index =
      s.device.rfind("cuda:", 0) == 0 && s.device.size() > 5 &&
      s.device.size() <= 8 &&
      std::all_of(s.device.begin() + 5, s.device.end(),
                  [](char c) { return c >= '0' && c <= '9'; });
  if (s.device != "auto" && s.device != "cpu" && s.device != "cuda" &&
      !cuda_index) {
    return Invalid("device.device",
                   absl::StrCat("is \"", s.device,
                                "\"; known: auto, cpu, cuda, cuda:N"));
  }
  if (s.dtype != "auto" && s.dtype != "float32" && s.dtype != "bfloat16") {
    return Invalid("device.dtype",
                   absl::StrCat("is \"", s.dtype,
                                "\"; known: auto, float32, bfloat16"));
  }
  return absl::OkStatus();
}
void AddResumeKeys(const DeviceSpec&, Json*) {}

// ---- evaluation
Json ToJson(const EvaluationSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, EvaluationSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const EvaluationSpec& s) {
  RETURN_IF_ERROR(NonNegative("evaluation", "every_steps", s.every_steps));
  if (s.general_tokens != "assistant" && s.general_tokens != "all") {
    return Invalid("evaluation.general_tokens",
                   absl::StrCat("is \"", s.general_tokens,
                                "\"; known: assistant, all"));
  }
  RETURN_IF_ERROR(
      NonNegative("evaluation", "intruder_top_k", s.intruder_top_k));
  if (!(s.intruder_epsilon > 0 && s.intruder_epsilon <= 1)) {
    return Invalid("evaluation.intruder_epsilon", "must be in (0, 1]");
  }
  if (!(s.intruder_mitigation_lambda == -1 ||
        (s.intruder_mitigation_lambda >= 0 && s.intruder_mitigation_lambda <= 1))) {
    return Invalid("evaluation.intruder_mitigation_lambda",
                   "must be in [0, 1] (PEFT's default 0.75), or -1 for none");
  }
  return absl::OkStatus();
}
void AddResumeKeys(const EvaluationSpec&, Json*) {}

// ---- self_training
Json ToJson(const SelfTrainingSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, SelfTrainingSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const SelfTrainingSpec& s) {
  if (s.iterations < 0 || s.iterations > 16) {
    return Invalid("self_training.iterations", "must be in 0..16");
  }
  if (s.samples_per_prompt < 1 || s.samples_per_prompt > 256) {
    return Invalid("self_training.samples_per_prompt", "must be in 1..256");
  }
  if (!(s.temperature >= 0 && s.temperature <= 100)) {
    return Invalid("self_training.temperature", "must be in [0, 100]");
  }
  if (!(s.top_p > 0 && s.top_p <= 1)) {
    return Invalid("self_training.top_p", "must be in (0, 1]");
  }
  if (s.max_new_tokens < 1 || s.max_new_tokens > 4096) {
    return Invalid("self_training.max_new_tokens", "must be in 1..4096");
  }
  absl::Status extractor = ValidateExtractor(
      AnswerExtractor{.kind = s.answer_extractor, .pattern = s.answer_pattern});
  if (!extractor.ok()) {
    return Invalid(s.answer_extractor == "regex"
                       ? "self_training.answer_pattern"
                       : "self_training.answer_extractor",
                   std::string(extractor.message()));
  }
  if (s.dedupe != "equations" && s.dedupe != "exact" && s.dedupe != "none") {
    return Invalid("self_training.dedupe",
                   absl::StrCat("is \"", s.dedupe,
                                "\"; known: equations, exact, none"));
  }
  if (s.init != "current" && s.init != "base") {
    return Invalid("self_training.init",
                   absl::StrCat("is \"", s.init, "\"; known: current, base"));
  }
  return absl::OkStatus();
}
// Every setting decides an iteration's data or weights.
void AddResumeKeys(const SelfTrainingSpec& s, Json* keys) {
  if (s.iterations > 0) (*keys)["self_training"] = ToJson(s);
}

// ---- output
Json ToJson(const OutputSpec& s) { return SectionToJson(s); }
absl::Status FromJson(const Json& j, OutputSpec* s) {
  return SectionFromJson(j, s);
}
absl::Status Validate(const OutputSpec& s) {
  if (s.dir.empty()) return Invalid("output.dir", "is required");
  return absl::OkStatus();
}
void AddResumeKeys(const OutputSpec&, Json*) {}

// ---- the whole spec
namespace {

// Calls f(name, section) for every section of `spec`.
template <typename S, typename F>
void Sections(S& spec, F&& f) {
  f("model", spec.model);
  f("data", spec.data);
  f("adapter", spec.adapter);
  f("trainable", spec.trainable);
  f("objective", spec.objective);
  f("optimizer", spec.optimizer);
  f("schedule", spec.schedule);
  f("checkpoint", spec.checkpoint);
  f("device", spec.device);
  f("evaluation", spec.evaluation);
  f("self_training", spec.self_training);
  f("output", spec.output);
}

}  // namespace

absl::StatusOr<RunSpec> ParseRunSpec(const Json& json,
                                     const std::string& base_dir) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError("the spec is not a JSON object");
  }
  RunSpec spec;
  std::set<std::string> known = {"seed"};
  absl::Status status;
  Sections(spec, [&](const char* name, auto& section) {
    known.insert(name);
    auto it = json.find(name);
    if (status.ok() && it != json.end()) status = FromJson(*it, &section);
  });
  RETURN_IF_ERROR(status);
  for (const auto& [key, value] : json.items()) {
    if (known.count(key)) continue;
    for (const auto& [flat, now] : kFlatFields) {
      if (key == flat) {
        return absl::InvalidArgumentError(absl::StrCat(
            "spec field \"", key, "\" is from the flat spec layout; it is ",
            now, " now (see docs/adding-a-method.md for the sections)"));
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown spec field \"", key, "\""));
  }
  if (auto it = json.find("seed"); it != json.end()) {
    if (!HasType<uint64_t>(*it)) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec field \"seed\" has the wrong type: ", it->dump()));
    }
    spec.seed = it->get<uint64_t>();
  }
  for (std::string* path :
       {&spec.model.dir, &spec.data.training_file, &spec.data.validation_file,
        &spec.evaluation.general_file,
        &spec.checkpoint.dir, &spec.checkpoint.resume_from, &spec.output.dir,
        &spec.output.merged_dir}) {
    *path = Resolve(*path, base_dir);
  }
  auto resolve_sources = [&](MixtureSpec& mixture) {
    for (MixtureSourceSpec& source : mixture.sources) {
      source.file = Resolve(source.file, base_dir);
      source.validation_file = Resolve(source.validation_file, base_dir);
    }
  };
  resolve_sources(spec.data.mixture);
  for (StageSpec& stage : spec.data.stages) resolve_sources(stage.mixture);
  return spec;
}

Json RunSpecJson(const RunSpec& spec) {
  Json json = {{"seed", spec.seed}};
  Sections(spec, [&](const char* name, const auto& section) {
    json[name] = ToJson(section);
  });
  return json;
}

absl::Status ValidateRunSpec(const RunSpec& spec) {
  absl::Status status;
  Sections(spec, [&](const char*, const auto& section) {
    if (status.ok()) status = Validate(section);
  });
  RETURN_IF_ERROR(status);
  if (Lora(spec.adapter) == nullptr && !spec.output.merged_dir.empty()) {
    return Invalid("output.merged_dir",
                   "is for LoRA runs only (an S²FT run's output.dir holds "
                   "the merged model)");
  }
  if (spec.evaluation.intruder_mitigation_lambda >= 0 &&
      (Lora(spec.adapter) == nullptr || Lora(spec.adapter)->use_dora)) {
    return Invalid("evaluation.intruder_mitigation_lambda",
                   "is for LoRA adapters without DoRA (PEFT's "
                   "reduce_intruder_dimension re-factorises B and A)");
  }
  if (IsPreference(spec.objective) && !spec.data.stages.empty()) {
    return Invalid("data.stages", "are for objective sft");
  }
  if (IsPreference(spec.objective) &&
      std::holds_alternative<PromptTuningSpec>(spec.adapter)) {
    return Invalid("adapter.type",
                   "prompt_tuning is for objective sft; dpo and orpo train a "
                   "LoRA or a full adapter");
  }
  if (!std::holds_alternative<FullSpec>(spec.adapter) &&
      spec.trainable.Selects()) {
    const TrainableSpec& t = spec.trainable;
    const char* field = t.lisa      ? "trainable.lisa"
                        : t.half_ft ? "trainable.half_ft"
                        : !t.layers.empty() ? "trainable.layers"
                                            : "trainable.modules";
    return Invalid(field,
                   "is for full fine-tuning (LoRA chooses its layers with "
                   "adapter.layers_to_transform and its projections with "
                   "adapter.target_modules)");
  }
  if (spec.self_training.iterations > 0) {
    const std::string type = ObjectiveType(spec.objective);
    if (type != "sft" && type != "dpo") {
      return Invalid("self_training.iterations",
                     "is for objective sft (rejection-sampling fine-tuning) "
                     "and dpo (SPIN)");
    }
    if (type == "dpo" && spec.self_training.samples_per_prompt != 1) {
      return Invalid("self_training.samples_per_prompt",
                     "must be 1 for SPIN (one generated reply per prompt)");
    }
    if (type == "dpo" && !spec.data.validation_file.empty()) {
      return Invalid("data.validation_file",
                     "cannot be combined with SPIN yet (its pairs are "
                     "generated from the training file)");
    }
    if (std::holds_alternative<PromptTuningSpec>(spec.adapter)) {
      return Invalid("adapter.type",
                     "prompt_tuning cannot run self_training; use a LoRA or "
                     "a full adapter");
    }
    if (!spec.data.stages.empty() || !spec.data.mixture.sources.empty()) {
      return Invalid(spec.data.stages.empty() ? "data.mixture" : "data.stages",
                     "cannot be combined with self_training: each "
                     "iteration's training data is its RFT set");
    }
  }
  // A pair row must keep at least one reply token after its prompt.
  const int max_prompt_len = std::visit(
      [](const auto& o) {
        if constexpr (requires { o.max_prompt_len; }) return o.max_prompt_len;
        return 0;
      },
      spec.objective);
  if (max_prompt_len >= spec.data.max_seq_len) {
    return Invalid("objective.max_prompt_len",
                   absl::StrCat("must be below data.max_seq_len (",
                                spec.data.max_seq_len, ")"));
  }
  return absl::OkStatus();
}

RunSpec StageRunSpec(const RunSpec& spec, size_t i) {
  RunSpec stage = spec;
  stage.data.stages.clear();
  stage.data.mixture = spec.data.stages[i].mixture;
  if (spec.data.stages[i].n_epochs > 0) {
    stage.schedule.n_epochs = spec.data.stages[i].n_epochs;
  }
  return stage;
}

Json ResumeKeys(const RunSpec& spec) {
  Json keys = {{"seed", spec.seed}};
  Sections(spec, [&](const char*, const auto& section) {
    AddResumeKeys(section, &keys);
  });
  return keys;
}

}  // namespace lathe::engine
