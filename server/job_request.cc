#include "server/job_request.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>
#include <regex>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/echo.h"
#include "common/half_ft.h"
#include "common/ids.h"
#include "common/job_method.h"
#include "common/layer_ranges.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "scheduler/memory_estimate.h"
#include "server/request_limits.h"

namespace lathe {
namespace {

constexpr const char* kTargetModules[] = {"q_proj", "k_proj", "v_proj",
                                          "o_proj", "gate_proj", "up_proj",
                                          "down_proj"};

// FillJobDefaults' max_seq_len, which the checks read when a job sets none.
constexpr int32_t kDefaultMaxSeqLen = 512;

// Workers a job trains on when it sets none (and a job stored before
// devices was recorded), and the most it may ask for.
constexpr int32_t kDefaultDevices = 1;
constexpr int32_t kMaxDevices = 64;
// The methods whose recipes train data-parallel over several workers.
constexpr const char* kDataParallelMethods[] = {"supervised", "dpo", "orpo"};

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}


// Projection names for LoRA factors (lora.target_modules, a merge's
// lora_target_modules): each known, none twice; errors name `field`[i].
absl::Status CheckTargetModules(const std::string& field,
                                const google::protobuf::RepeatedPtrField<std::string>& modules) {
  for (int i = 0; i < modules.size(); ++i) {
    const std::string& m = modules[i];
    const std::string at = absl::StrCat(field, "[", i, "]");
    if (std::find(std::begin(kTargetModules), std::end(kTargetModules), m) ==
        std::end(kTargetModules)) {
      return Bad(at, absl::StrCat("unknown module \"", Echo(m), "\" (known: ",
                                  absl::StrJoin(kTargetModules, ", "), ")"));
    }
    for (int j = 0; j < i; ++j) {
      if (modules[j] == m) {
        return Bad(at, absl::StrCat("\"", m, "\" is already ", field, "[", j, "]"));
      }
    }
  }
  return absl::OkStatus();
}

// The module names trainable.modules accepts: a layer's projections, its
// groups and its norms.
constexpr const char* kLayerModules[] = {"q_proj",
                                         "k_proj",
                                         "v_proj",
                                         "o_proj",
                                         "gate_proj",
                                         "up_proj",
                                         "down_proj",
                                         "self_attn",
                                         "mlp",
                                         "input_layernorm",
                                         "post_attention_layernorm"};

absl::Status CheckTrainable(const v1::CreateJobRequest& r) {
  const v1::Trainable& t = r.trainable();
  if (r.adapter() != v1::ADAPTER_TYPE_FULL) {
    const char* field = t.has_lisa()       ? "trainable.lisa"
                        : t.has_half_ft()  ? "trainable.half_ft"
                        : t.layers_size()  ? "trainable.layers"
                        : t.modules_size() ? "trainable.modules"
                                           : "trainable";
    return Bad(
        field,
        "is for full fine-tuning (adapter FULL); LoRA chooses its layers "
        "with lora.layers_to_transform and its projections with "
        "lora.target_modules");
  }
  RETURN_IF_ERROR(CheckLayerRanges({t.layers().begin(), t.layers().end()},
                                   "trainable.layers"));
  for (int i = 0; i < t.modules_size(); ++i) {
    const std::string& m = t.modules(i);
    const std::string field = absl::StrCat("trainable.modules[", i, "]");
    if (std::find(std::begin(kLayerModules), std::end(kLayerModules), m) ==
        std::end(kLayerModules)) {
      return Bad(field,
                 absl::StrCat("unknown module \"", Echo(m), "\" (known: ",
                              absl::StrJoin(kLayerModules, ", "), ")"));
    }
    for (int j = 0; j < i; ++j) {
      if (t.modules(j) == m) {
        return Bad(
            field,
            absl::StrCat("\"", m, "\" is already trainable.modules[", j, "]"));
      }
    }
  }
  const bool by_name = t.layers_size() > 0 || t.modules_size() > 0;
  if (t.has_lisa()) {
    if (by_name || t.has_half_ft()) {
      return Bad(
          "trainable.lisa",
          "draws its own layers: it cannot be combined with trainable.layers, "
          "trainable.modules or trainable.half_ft");
    }
    const v1::Lisa& lisa = t.lisa();
    if (lisa.has_activated_layers() &&
        (lisa.activated_layers() < 1 || lisa.activated_layers() > 4096)) {
      return Bad(
          "trainable.lisa.activated_layers",
          absl::StrCat(lisa.activated_layers(), " is out of range 1..4096"));
    }
    if (lisa.has_interval_steps() &&
        (lisa.interval_steps() < 1 || lisa.interval_steps() > 1'000'000)) {
      return Bad(
          "trainable.lisa.interval_steps",
          absl::StrCat(lisa.interval_steps(), " is out of range 1..1000000"));
    }
  }
  if (t.has_half_ft()) {
    if (by_name) {
      return Bad(
          "trainable.half_ft",
          "draws its own half of every layer: it cannot be combined with "
          "trainable.layers or trainable.modules");
    }
    if (!v1::HalfFtReselect_IsValid(t.half_ft().reselect())) {
      return Bad("trainable.half_ft.reselect", "unknown value");
    }
    if (t.half_ft().has_seed() && t.half_ft().seed() < 0) {
      return Bad("trainable.half_ft.seed", "must be >= 0");
    }
    if (t.half_ft().has_fraction() &&
        !(t.half_ft().fraction() > 0 && t.half_ft().fraction() <= 1)) {
      return Bad("trainable.half_ft.fraction",
                 absl::StrCat(t.half_ft().fraction(), " is not in (0, 1]"));
    }
  }
  return absl::OkStatus();
}

// What a full fine-tuning with `t` trains at most at one time, for the
// memory estimate (scheduler::TrainedPart), on a model of `layers` decoder
// layers; none (every parameter) when the layer count is not known or the
// job selects nothing. REQUIRES: t resolved (FillJobDefaults).
std::optional<scheduler::TrainedPart> TrainedPartOf(const v1::Trainable& t,
                                                    int64_t layers) {
  if (layers <= 0) return std::nullopt;
  if (t.has_lisa()) {
    return scheduler::TrainedPart{
        .ends = true,
        .whole_layers = std::min<int64_t>(t.lisa().activated_layers(), layers)};
  }
  if (t.has_half_ft()) {
    const HalfFtMatrices counts =
        HalfFtMatrixCounts(t.half_ft().fraction(), layers);
    // The draw is random: at worst a layer's attention matrices are q and o
    // (the larger ones) first. A layer takes ⌊a/L⌋ or ⌈a/L⌉ of them, so
    // that is all a of them up to 2 per layer.
    const int64_t q_o = std::min(counts.attention, 2 * layers);
    return scheduler::TrainedPart{.ends = t.half_ft().include_embeddings(),
                                  .q_o_matrices = q_o,
                                  .k_v_matrices = counts.attention - q_o,
                                  .mlp_matrices = counts.mlp};
  }
  if (t.layers().empty() && t.modules().empty()) return std::nullopt;
  int64_t selected = layers;
  if (!t.layers().empty()) {
    absl::StatusOr<std::vector<int>> resolved =
        ResolveLayerRanges({t.layers().begin(), t.layers().end()},
                           static_cast<int>(layers), "trainable.layers");
    if (!resolved.ok()) return std::nullopt;
    selected = static_cast<int64_t>(resolved->size());
  }
  if (t.modules().empty()) {
    return scheduler::TrainedPart{.whole_layers = selected};
  }
  // The tensors of a layer the modules name, each once ("self_attn" and
  // "q_proj" both name q_proj).
  std::set<std::string> tensors;
  for (const std::string& m : t.modules()) {
    if (m == "self_attn") {
      tensors.insert({"q_proj", "k_proj", "v_proj", "o_proj"});
    } else if (m == "mlp") {
      tensors.insert({"gate_proj", "up_proj", "down_proj"});
    } else {
      tensors.insert(m);
    }
  }
  const auto count = [&](std::initializer_list<const char*> names) {
    int64_t n = 0;
    for (const char* name : names) n += tensors.count(name);
    return n * selected;
  };
  return scheduler::TrainedPart{
      .q_o_matrices = count({"q_proj", "o_proj"}),
      .k_v_matrices = count({"k_proj", "v_proj"}),
      .mlp_matrices = count({"gate_proj", "up_proj", "down_proj"}),
      .norms = count({"input_layernorm", "post_attention_layernorm"})};
}

bool Finite(double v) { return std::isfinite(v); }

// A source's or a stage's name: up to 64 letters, digits, '.', '_', '-'.
bool NameOk(const std::string& name) {
  return name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
         });
}

// A training mixture (METHODS.md §2.2) at field `mixture_field`
// (training_mixture, stages[1].training_mixture): its files, weights
// and options. REQUIRES: sources.
absl::Status CheckMixture(const v1::Mixture& m, const std::string& mixture_field) {
  constexpr int kMaxSources = 16;
  if (m.sources_size() > kMaxSources) {
    return Bad(mixture_field + ".sources", absl::StrCat("at most ", kMaxSources, " sources"));
  }
  double proportions = 0;
  bool drawn = false;
  for (int i = 0; i < m.sources_size(); ++i) {
    const v1::MixtureSource& s = m.sources(i);
    const std::string at = absl::StrCat(mixture_field, ".sources[", i, "].");
    RETURN_IF_ERROR(CheckIdField(at + "file_id", s.file_id()));
    RETURN_IF_ERROR(
        CheckIdField(at + "validation_file_id", s.validation_file_id(), /*required=*/false));
    if (s.has_weight() && !(Finite(s.weight()) && s.weight() > 0)) {
      return Bad(at + "weight", absl::StrCat(s.weight(), " must be > 0"));
    }
    if (s.has_proportion() &&
        !(Finite(s.proportion()) && s.proportion() >= 0 && s.proportion() < 1)) {
      return Bad(at + "proportion", "must be in [0, 1)");
    }
    if (s.has_fraction() && !(Finite(s.fraction()) && s.fraction() > 0 && s.fraction() <= 1)) {
      return Bad(at + "fraction", "must be in (0, 1]");
    }
    if (!NameOk(s.name())) {
      return Bad(at + "name", "up to 64 letters, digits, '.', '_' and '-'");
    }
    const std::string name = s.name().empty() ? s.file_id() : s.name();
    for (int j = 0; j < i; ++j) {
      const v1::MixtureSource& o = m.sources(j);
      if ((o.name().empty() ? o.file_id() : o.name()) == name) {
        return Bad(at + "name",
                   absl::StrCat("\"", Echo(name), "\" is already sources[", j, "]'s name"));
      }
    }
    proportions += s.proportion();
    drawn = drawn || s.proportion() == 0;
  }
  if (!drawn || proportions >= 1) {
    return Bad(mixture_field + ".sources",
               "need one source without a proportion, and proportions summing below 1");
  }
  if (!v1::MixtureStrategy_IsValid(m.strategy())) {
    return Bad(mixture_field + ".strategy", "unknown value");
  }
  if (!v1::MixtureStop_IsValid(m.stop())) return Bad(mixture_field + ".stop", "unknown value");
  if (m.has_temperature() && !(Finite(m.temperature()) && m.temperature() > 0)) {
    return Bad(mixture_field + ".temperature", "must be > 0");
  }
  return absl::OkStatus();
}

// stages (DMT, METHODS.md §2.2): each a mixture, a name and n_epochs.
absl::Status CheckStages(const v1::CreateJobRequest& r) {
  constexpr int kMaxStages = 8;
  if (r.stages_size() > kMaxStages) {
    return Bad("stages", absl::StrCat("at most ", kMaxStages, " stages"));
  }
  if (r.has_training_mixture()) {
    return Bad("training_mixture", "leave it unset with stages (each stage has its training_mixture)");
  }
  for (int i = 0; i < r.stages_size(); ++i) {
    const v1::TrainingStage& stage = r.stages(i);
    const std::string at = absl::StrCat("stages[", i, "].");
    if (stage.training_mixture().sources_size() == 0) {
      return Bad(at + "training_mixture.sources", "must not be empty: each stage needs its files");
    }
    RETURN_IF_ERROR(CheckMixture(stage.training_mixture(), at + "training_mixture"));
    if (stage.has_n_epochs() && (stage.n_epochs() < 1 || stage.n_epochs() > 50)) {
      return Bad(at + "n_epochs", absl::StrCat(stage.n_epochs(), " is out of range 1..50"));
    }
    if (!NameOk(stage.name())) return Bad(at + "name", "up to 64 letters, digits, '.', '_' and '-'");
    const std::string name = stage.name().empty() ? absl::StrCat("stage-", i + 1) : stage.name();
    for (int j = 0; j < i; ++j) {
      const std::string other =
          r.stages(j).name().empty() ? absl::StrCat("stage-", j + 1) : r.stages(j).name();
      if (other == name) {
        return Bad(at + "name", absl::StrCat("\"", Echo(name), "\" is already stages[", j, "]'s name"));
      }
    }
  }
  const std::string& first = r.stages(0).training_mixture().sources(0).file_id();
  if (!r.training_file().empty() && r.training_file() != first) {
    return Bad("training_file",
               "leave it empty with stages (or give stages[0].training_mixture.sources[0].file_id)");
  }
  return absl::OkStatus();
}

absl::Status CheckMaskedThought(const v1::MaskedThought& mt) {
  const std::string at = "method.supervised.masked_thought.";
  if (mt.has_mask_rate() &&
      !(Finite(mt.mask_rate()) && mt.mask_rate() >= 0 && mt.mask_rate() <= 1)) {
    return Bad(at + "mask_rate", "must be in [0, 1]");
  }
  if (!v1::MaskRateSchedule_IsValid(mt.schedule())) return Bad(at + "schedule", "unknown value");
  if (mt.has_warmup_ratio() &&
      !(Finite(mt.warmup_ratio()) && mt.warmup_ratio() > 0 && mt.warmup_ratio() <= 1)) {
    return Bad(at + "warmup_ratio", "must be in (0, 1]");
  }
  if (mt.has_mask_token_id() && mt.mask_token_id() < 0) {
    return Bad(at + "mask_token_id", "must be >= 0");
  }
  return absl::OkStatus();
}

// The preference settings: only for the methods that take them, in range.
absl::Status CheckPreferenceHyperparameters(const std::string& type,
                                            const v1::Hyperparameters& hp,
                                            const std::string& prefix) {
  // SPIN trains DPO on its generated pairs: DPO's settings.
  const bool dpo = type == "dpo" || type == "spin", orpo = type == "orpo";
  struct Setting {
    const char* field;
    bool set;
    bool dpo, orpo;  // which methods take it
  };
  for (const Setting& f : {
           Setting{"beta", hp.has_beta(), true, true},
           Setting{"loss_type", hp.loss_type() != v1::PREFERENCE_LOSS_UNSPECIFIED, true,
                   false},
           Setting{"label_smoothing", hp.has_label_smoothing(), true, false},
           Setting{"rpo_alpha", hp.has_rpo_alpha(), true, false},
           Setting{"max_prompt_len", hp.has_max_prompt_len(), true, true},
       }) {
    if (f.set && !(dpo && f.dpo) && !(orpo && f.orpo)) {
      return Bad(prefix + f.field,
                 absl::StrCat("is for method.type ",
                              f.orpo ? "\"dpo\" or \"orpo\"" : "\"dpo\"",
                              ", not \"", type, "\""));
    }
  }
  if (hp.has_beta() && (!std::isfinite(hp.beta()) || hp.beta() <= 0 || hp.beta() > 2)) {
    return Bad(prefix + "beta", absl::StrCat(hp.beta(), " must be in (0, 2]"));
  }
  if (!v1::PreferenceLoss_IsValid(hp.loss_type())) {
    return Bad(prefix + "loss_type", "unknown value");
  }
  if (hp.has_label_smoothing()) {
    if (!std::isfinite(hp.label_smoothing()) || hp.label_smoothing() < 0 ||
        hp.label_smoothing() >= 0.5) {
      return Bad(prefix + "label_smoothing", "must be in [0, 0.5)");
    }
    if (hp.label_smoothing() > 0 && hp.loss_type() != v1::PREFERENCE_LOSS_UNSPECIFIED &&
        hp.loss_type() != v1::PREFERENCE_LOSS_SIGMOID &&
        hp.loss_type() != v1::PREFERENCE_LOSS_ROBUST) {
      return Bad(prefix + "label_smoothing", "is for loss_type SIGMOID and ROBUST only");
    }
  }
  if (hp.has_rpo_alpha() &&
      (!std::isfinite(hp.rpo_alpha()) || hp.rpo_alpha() < 0 || hp.rpo_alpha() > 100)) {
    return Bad(prefix + "rpo_alpha", "must be in [0, 100]");
  }
  const int32_t max_seq_len =
      hp.has_max_seq_len() ? hp.max_seq_len() : kDefaultMaxSeqLen;
  if (hp.has_max_prompt_len() && hp.max_prompt_len() >= max_seq_len) {
    return Bad(prefix + "max_prompt_len",
               absl::StrCat(hp.max_prompt_len(), " must be below max_seq_len (",
                            max_seq_len, ")"));
  }
  return absl::OkStatus();
}

// What RftMethod and SpinMethod share: the iterations and the generation
// settings, in the engine's ranges (spec/run_spec.cc SelfTrainingSpec).
template <typename M>
absl::Status CheckSelfTraining(const v1::CreateJobRequest& r, const M& m,
                               const std::string& type) {
  const std::string at = absl::StrCat("method.", type, ".");
  if (m.has_iterations() && (m.iterations() < 1 || m.iterations() > 16)) {
    return Bad(at + "iterations", absl::StrCat(m.iterations(), " is out of range 1..16"));
  }
  if (m.has_max_new_tokens() && (m.max_new_tokens() < 1 || m.max_new_tokens() > 4096)) {
    return Bad(at + "max_new_tokens", absl::StrCat(m.max_new_tokens(), " is out of range 1..4096"));
  }
  if (m.has_temperature() &&
      !(Finite(m.temperature()) && m.temperature() >= 0 && m.temperature() <= 100)) {
    return Bad(at + "temperature", "must be in [0, 100]");
  }
  if (m.has_top_p() && !(Finite(m.top_p()) && m.top_p() > 0 && m.top_p() <= 1)) {
    return Bad(at + "top_p", "must be in (0, 1]");
  }
  return absl::OkStatus();
}

// An answer extractor's kind ("" = the method's default) and pattern, the
// fields under `at` (RFT's, a CLEAR analysis's).
absl::Status CheckAnswerExtractor(const std::string& at, const std::string& extractor,
                                  const std::string& pattern) {
  if (!extractor.empty() && extractor != "gsm8k" && extractor != "last_number" &&
      extractor != "regex" && extractor != "exact") {
    return Bad(at + "answer_extractor",
               absl::StrCat("\"", Echo(extractor),
                            "\" is not one of gsm8k, last_number, regex, exact"));
  }
  if (extractor == "regex") {
    if (pattern.empty()) return Bad(at + "answer_pattern", "is required with regex");
    if (pattern.size() > 1024) return Bad(at + "answer_pattern", "is over 1024 bytes");
    try {
      std::regex compiled(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return Bad(at + "answer_pattern", absl::StrCat("does not compile: ", e.what()));
    }
  } else if (!pattern.empty()) {
    return Bad(at + "answer_pattern", "is for answer_extractor \"regex\"");
  }
  return absl::OkStatus();
}

// Rejection-sampling fine-tuning's settings (RftMethod), checked before
// anything is stored.
absl::Status CheckRft(const v1::CreateJobRequest& r) {
  if (MethodType(r.method()) != "rft") return absl::OkStatus();
  const v1::RftMethod& m = r.method().rft();
  const std::string at = "method.rft.";
  if (m.has_samples_per_prompt() && (m.samples_per_prompt() < 1 || m.samples_per_prompt() > 256)) {
    return Bad(at + "samples_per_prompt",
               absl::StrCat(m.samples_per_prompt(), " is out of range 1..256"));
  }
  RETURN_IF_ERROR(CheckSelfTraining(r, m, "rft"));
  RETURN_IF_ERROR(CheckAnswerExtractor(at, m.answer_extractor(), m.answer_pattern()));
  if (!m.dedupe().empty() && m.dedupe() != "equations" && m.dedupe() != "exact" &&
      m.dedupe() != "none") {
    return Bad(at + "dedupe",
               absl::StrCat("\"", Echo(m.dedupe()), "\" is not one of equations, exact, none"));
  }
  if (!m.init().empty() && m.init() != "current" && m.init() != "base") {
    return Bad(at + "init",
               absl::StrCat("\"", Echo(m.init()), "\" is not one of current, base"));
  }
  return absl::OkStatus();
}

// SPIN's settings (SpinMethod), as CheckRft.
absl::Status CheckSpin(const v1::CreateJobRequest& r) {
  if (MethodType(r.method()) != "spin") return absl::OkStatus();
  RETURN_IF_ERROR(CheckSelfTraining(r, r.method().spin(), "spin"));
  if (!r.validation_file().empty()) {
    return Bad("validation_file", "cannot be combined with method.type \"spin\" yet");
  }
  return absl::OkStatus();
}

// S²FT's settings (adapter S2FT only): ratios in [0, 1], not all 0.
absl::Status CheckS2ft(const v1::CreateJobRequest& r) {
  const bool s2ft = r.adapter() == v1::ADAPTER_TYPE_S2FT;
  if (!s2ft) {
    if (r.has_s2ft()) return Bad("s2ft", "S²FT settings are for adapter S2FT");
    return absl::OkStatus();
  }
  if (r.has_lora()) {
    return Bad("lora", "LoRA settings are for adapter LORA; S²FT trains rows and columns (s2ft)");
  }
  const v1::S2ftConfig& c = r.s2ft();
  const std::pair<const char*, std::optional<double>> ratios[] = {
      {"s2ft.d_ratio", c.has_d_ratio() ? std::optional(c.d_ratio()) : std::nullopt},
      {"s2ft.u_ratio", c.has_u_ratio() ? std::optional(c.u_ratio()) : std::nullopt},
      {"s2ft.o_ratio", c.has_o_ratio() ? std::optional(c.o_ratio()) : std::nullopt},
      {"s2ft.v_ratio", c.has_v_ratio() ? std::optional(c.v_ratio()) : std::nullopt}};
  bool any_set = false, any_positive = false;
  for (const auto& [field, ratio] : ratios) {
    if (!ratio) continue;
    any_set = true;
    if (!std::isfinite(*ratio) || *ratio < 0 || *ratio > 1) {
      return Bad(field, "must be in [0, 1]");
    }
    any_positive = any_positive || *ratio > 0;
  }
  if (any_set && !any_positive) {
    return Bad("s2ft.d_ratio", "every ratio is 0: S²FT would train nothing (the "
                               "reference's LLaMA-3 setting is d_ratio 0.03)");
  }
  if (c.has_seed() && c.seed() < 0) return Bad("s2ft.seed", "must be at least 0");
  return absl::OkStatus();
}

// Prompt tuning's settings, and its adapter: nothing of LoRA's.
absl::Status CheckPromptTuning(const v1::CreateJobRequest& r) {
  const bool prompt = MethodType(r.method()) == "prompt_tuning";
  if (!prompt) {
    if (r.adapter() == v1::ADAPTER_TYPE_PROMPT_TUNING) {
      return Bad("adapter", "PROMPT_TUNING comes with method.type \"prompt_tuning\"");
    }
    return absl::OkStatus();
  }
  if (r.adapter() != v1::ADAPTER_TYPE_UNSPECIFIED &&
      r.adapter() != v1::ADAPTER_TYPE_PROMPT_TUNING) {
    return Bad("adapter", "prompt tuning trains its virtual tokens; leave adapter unset");
  }
  if (r.has_lora()) {
    return Bad("lora", "LoRA settings are for adapter LORA; prompt tuning trains virtual tokens");
  }
  const v1::PromptTuningMethod& p = r.method().prompt_tuning();
  if (p.has_num_virtual_tokens() &&
      (p.num_virtual_tokens() < 1 || p.num_virtual_tokens() > 1024)) {
    return Bad("method.prompt_tuning.num_virtual_tokens",
               absl::StrCat(p.num_virtual_tokens(), " is out of range 1..1024"));
  }
  if (!v1::PromptTuningInit_IsValid(p.init())) {
    return Bad("method.prompt_tuning.init", "unknown value");
  }
  const bool text = p.init() == v1::PROMPT_TUNING_INIT_TEXT;
  if (text && p.init_text().empty()) {
    return Bad("method.prompt_tuning.init_text", "required with init TEXT");
  }
  if (!text && !p.init_text().empty()) {
    return Bad("method.prompt_tuning.init_text", "is for init TEXT only");
  }
  if (p.init_text().size() > 4096) {
    return Bad("method.prompt_tuning.init_text", "longer than 4096 bytes");
  }
  return absl::OkStatus();
}

// OK when `r` (a job that trains nothing: `what`) sets no training field
// and no other method's message; training_file only when
// `reads_training_file`.
absl::Status CheckNothingOfTraining(const v1::CreateJobRequest& r, const char* what,
                                    bool reads_training_file) {
  const std::string type = MethodType(r.method());
  const v1::Method& m = r.method();
  for (const auto& [field, set] :
       {std::pair<const char*, bool>{"training_file",
                                     !reads_training_file && !r.training_file().empty()},
        {"training_mixture", r.has_training_mixture()},
        {"stages", r.stages_size() > 0},
        {"lora", r.has_lora()},
        {"s2ft", r.has_s2ft()},
        {"trainable", r.has_trainable()},
        {"reports", r.has_reports()},
        {"adapter", r.adapter() != v1::ADAPTER_TYPE_UNSPECIFIED},
        {"method.supervised", m.has_supervised()},
        {"method.dpo", m.has_dpo()},
        {"method.orpo", m.has_orpo()},
        {"method.prompt_tuning", m.has_prompt_tuning()},
        {"method.rft", m.has_rft()},
        {"method.spin", m.has_spin()},
        {"method.merge", type != "merge" && m.has_merge()},
        {"method.analyze", type != "analyze" && m.has_analyze()}}) {
    if (set) return Bad(field, absl::StrCat("is for training jobs; ", what, " trains nothing"));
  }
  return absl::OkStatus();
}

// A merge job (MergeMethod): its inputs and parameters; nothing of
// training may be set.
absl::Status CheckMergeRequest(const v1::CreateJobRequest& r) {
  const v1::MergeMethod& m = r.method().merge();
  const std::string at = "method.merge.";
  RETURN_IF_ERROR(CheckNothingOfTraining(r, "a merge job", /*reads_training_file=*/false));
  if (m.inputs_size() < 2 || m.inputs_size() > 16) {
    return Bad(at + "inputs", absl::StrCat(m.inputs_size(), " inputs; a merge takes 2 to 16 fine-tuned models"));
  }
  for (int i = 0; i < m.inputs_size(); ++i) {
    RETURN_IF_ERROR(CheckIdField(absl::StrCat(at, "inputs[", i, "]"), m.inputs(i)));
    for (int j = 0; j < i; ++j) {
      if (m.inputs(j) == m.inputs(i)) {
        return Bad(absl::StrCat(at, "inputs[", i, "]"),
                   absl::StrCat(Echo(m.inputs(i)), " is already inputs[", j, "]"));
      }
    }
  }
  constexpr const char* kMethods[] = {"linear", "task_arithmetic", "ties", "dare_linear",
                                      "dare_ties", "breadcrumbs", "lines", "greedy_soup"};
  const std::string method = m.merge_method().empty() ? "linear" : m.merge_method();
  if (std::find(std::begin(kMethods), std::end(kMethods), method) == std::end(kMethods)) {
    return Bad(at + "merge_method", absl::StrCat("\"", Echo(method), "\" is not one of ",
                                                  absl::StrJoin(kMethods, ", ")));
  }
  if (m.weights_size() > 0) {
    if (method == "greedy_soup") return Bad(at + "weights", "greedy_soup takes no weights");
    if (m.weights_size() != m.inputs_size()) {
      return Bad(at + "weights", absl::StrCat(m.weights_size(), " weights for ", m.inputs_size(),
                                              " inputs: give one per input"));
    }
    for (int i = 0; i < m.weights_size(); ++i) {
      const double w = m.weights(i);
      if (!Finite(w) || (method == "linear" ? w <= 0 : w == 0)) {
        return Bad(absl::StrCat(at, "weights[", i, "]"),
                   method == "linear" ? "must be > 0" : "must be finite and not 0");
      }
    }
  }
  auto in = [&](const char* name, bool has, double v, double lo, bool lo_open, double hi) {
    if (!has) return absl::OkStatus();
    if (!Finite(v) || v < lo || (lo_open && v == lo) || v > hi) {
      return Bad(at + name, absl::StrCat(v, " is out of range ", lo_open ? "(" : "[", lo, ", ",
                                         hi, "]"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(in("lambda", m.has_lambda(), m.lambda(), -100, false, 100));
  RETURN_IF_ERROR(in("density", m.has_density(), m.density(), 0, true, 1));
  RETURN_IF_ERROR(in("beta", m.has_beta(), m.beta(), 0, true, 1));
  RETURN_IF_ERROR(in("gamma", m.has_gamma(), m.gamma(), 0, false, 1));
  RETURN_IF_ERROR(in("lines_alpha", m.has_lines_alpha(), m.lines_alpha(), -100, false, 100));
  RETURN_IF_ERROR(in("lines_beta", m.has_lines_beta(), m.lines_beta(), -100, false, 100));
  if (!m.majority_sign().empty() && m.majority_sign() != "total" &&
      m.majority_sign() != "frequency") {
    return Bad(at + "majority_sign", "use total or frequency");
  }
  if (m.has_lora_rank() && (m.lora_rank() < 1 || m.lora_rank() > 1024)) {
    return Bad(at + "lora_rank", absl::StrCat(m.lora_rank(), " is out of range 1..1024"));
  }
  if (!m.has_lora_rank() && m.lora_target_modules_size() > 0) {
    return Bad(at + "lora_target_modules", "goes with lora_rank (a LoRA result)");
  }
  RETURN_IF_ERROR(CheckTargetModules(at + "lora_target_modules", m.lora_target_modules()));
  RETURN_IF_ERROR(CheckIdField("validation_file", r.validation_file(), /*required=*/false));
  if (method == "greedy_soup" && r.validation_file().empty()) {
    return Bad("validation_file", "greedy_soup orders and keeps inputs by their validation loss: give one");
  }
  return absl::OkStatus();
}

// A data analysis job (AnalyzeMethod): the file analysed, the overlap
// reference and the selection; nothing of training.
absl::Status CheckAnalyzeRequest(const v1::CreateJobRequest& r) {
  RETURN_IF_ERROR(CheckNothingOfTraining(r, "an analysis job", /*reads_training_file=*/true));
  RETURN_IF_ERROR(CheckIdField("training_file", r.training_file()));
  RETURN_IF_ERROR(CheckIdField("validation_file", r.validation_file(), /*required=*/false));
  const v1::AnalyzeMethod& a = r.method().analyze();
  if (a.has_max_seq_len() && (a.max_seq_len() < 2 || a.max_seq_len() > 32768)) {
    return Bad("method.analyze.max_seq_len", absl::StrCat(a.max_seq_len(), " is out of range 2..32768"));
  }
  const double lo = a.has_loss_quantile_low() ? a.loss_quantile_low() : 0;
  const double hi = a.has_loss_quantile_high() ? a.loss_quantile_high() : 1;
  if (!(Finite(lo) && Finite(hi) && 0 <= lo && lo < hi && hi <= 1)) {
    return Bad(a.has_loss_quantile_low() ? "method.analyze.loss_quantile_low"
                                         : "method.analyze.loss_quantile_high",
               "need 0 <= loss_quantile_low < loss_quantile_high <= 1");
  }
  if (a.has_batch_size() && (a.batch_size() < 1 || a.batch_size() > 256)) {
    return Bad("method.analyze.batch_size", absl::StrCat(a.batch_size(), " is out of range 1..256"));
  }
  if (!v1::AnalyzeSelection_IsValid(a.selection())) {
    return Bad("method.analyze.selection", "unknown value");
  }
  const v1::AnalyzeSelection selection = a.selection() == v1::ANALYZE_SELECTION_UNSPECIFIED
                                             ? v1::ANALYZE_SELECTION_LOSS_QUANTILE
                                             : a.selection();
  auto name = [](v1::AnalyzeSelection s) {
    return std::string(absl::StripPrefix(v1::AnalyzeSelection_Name(s), "ANALYZE_SELECTION_"));
  };
  // Each selection's settings only with it.
  for (const auto& [field, set, of] :
       {std::tuple<const char*, bool, v1::AnalyzeSelection>{
            "method.analyze.loss_quantile_low", a.has_loss_quantile_low(),
            v1::ANALYZE_SELECTION_LOSS_QUANTILE},
        {"method.analyze.loss_quantile_high", a.has_loss_quantile_high(),
         v1::ANALYZE_SELECTION_LOSS_QUANTILE},
        {"method.analyze.got_d", a.has_got_d(), v1::ANALYZE_SELECTION_GOT_D},
        {"method.analyze.clear", a.has_clear(), v1::ANALYZE_SELECTION_CLEAR}}) {
    if (set && selection != of) {
      return Bad(field, absl::StrCat("is for selection ", name(of), "; this one is ",
                                     name(selection)));
    }
  }
  auto in = [](const std::string& field, bool has, double v, double lo, bool lo_open,
               double hi, bool hi_open) {
    if (!has) return absl::OkStatus();
    if (!Finite(v) || v < lo || (lo_open && v == lo) || v > hi || (hi_open && v == hi)) {
      return Bad(field, absl::StrCat(v, " is out of range ", lo_open ? "(" : "[", lo, ", ", hi,
                                     hi_open ? ")" : "]"));
    }
    return absl::OkStatus();
  };
  if (selection == v1::ANALYZE_SELECTION_GOT_D) {
    const v1::GotDSelection& g = a.got_d();
    const std::string at = "method.analyze.got_d.";
    RETURN_IF_ERROR(CheckIdField(at + "target_file", g.target_file()));
    if (!g.has_budget()) return Bad(at + "budget", "is required: the number of lines to keep");
    if (g.budget() < 1) return Bad(at + "budget", absl::StrCat(g.budget(), " is below 1"));
    RETURN_IF_ERROR(
        in(at + "epsilon_fraction", g.has_epsilon_fraction(), g.epsilon_fraction(), 0, true, 10, false));
  }
  if (selection == v1::ANALYZE_SELECTION_CLEAR) {
    const v1::ClearSelection& c = a.clear();
    const std::string at = "method.analyze.clear.";
    if (!v1::ClearScore_IsValid(c.score())) return Bad(at + "score", "unknown value");
    RETURN_IF_ERROR(in(at + "alpha", c.has_alpha(), c.alpha(), 0, false, 1, false));
    RETURN_IF_ERROR(in(at + "temperature", c.has_temperature(), c.temperature(), 0, false, 100, false));
    RETURN_IF_ERROR(in(at + "drop_fraction", c.has_drop_fraction(), c.drop_fraction(), 0, false, 1, true));
    if (c.has_threshold() && !Finite(c.threshold())) return Bad(at + "threshold", "must be finite");
    if (c.has_samples() && (c.samples() < 1 || c.samples() > 64)) {
      return Bad(at + "samples", absl::StrCat(c.samples(), " is out of range 1..64"));
    }
    if (c.has_max_new_tokens() && (c.max_new_tokens() < 1 || c.max_new_tokens() > 4096)) {
      return Bad(at + "max_new_tokens", absl::StrCat(c.max_new_tokens(), " is out of range 1..4096"));
    }
    RETURN_IF_ERROR(CheckAnswerExtractor(at, c.answer_extractor(), c.answer_pattern()));
  }
  return absl::OkStatus();
}

// devices: 1..64, more than one only for a method that trains
// data-parallel, and never more than the step's batch (each worker takes a
// share of it).
absl::Status CheckDevices(const v1::CreateJobRequest& r) {
  if (!r.has_devices()) return absl::OkStatus();
  const int32_t n = r.devices();
  if (n < 1 || n > kMaxDevices) {
    return Bad("devices", absl::StrCat(n, " is out of range 1..", kMaxDevices));
  }
  if (n == 1) return absl::OkStatus();
  const std::string type = MethodType(r.method());
  if (std::find(std::begin(kDataParallelMethods),
                std::end(kDataParallelMethods),
                type) == std::end(kDataParallelMethods)) {
    return Bad(
        "devices",
        absl::StrCat(n, " workers: training on several is for method.type ",
                     absl::StrJoin(kDataParallelMethods, ", "), ", not \"",
                     Echo(type), "\""));
  }
  const v1::Hyperparameters& hp = MethodHyperparameters(r.method());
  if (hp.has_batch_size() && hp.batch_size() < n) {
    return Bad(HyperparametersPrefix(r.method()) + "batch_size",
               absl::StrCat(hp.batch_size(), " is less than devices (", n,
                            "): the step's batch is split across the workers"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckJobRequest(const v1::CreateJobRequest& r) {
  RETURN_IF_ERROR(CheckIdField("model", r.model()));
  if (MethodType(r.method()) == "merge") {
    if (!r.method().has_merge()) return Bad("method.merge.inputs", "a merge job needs its inputs");
    RETURN_IF_ERROR(CheckMergeRequest(r));
    return CheckDevices(r);
  }
  if (MethodType(r.method()) == "analyze") {
    RETURN_IF_ERROR(CheckAnalyzeRequest(r));
    return CheckDevices(r);
  }
  if (r.stages_size() > 0) {
    RETURN_IF_ERROR(CheckStages(r));
  } else if (r.training_mixture().sources_size() > 0) {
    const v1::Mixture& m = r.training_mixture();
    if (!r.training_file().empty() && r.training_file() != m.sources(0).file_id()) {
      return Bad("training_file",
                 "leave it empty with training_mixture (or give "
                 "training_mixture.sources[0].file_id)");
    }
    RETURN_IF_ERROR(CheckMixture(m, "training_mixture"));
  } else {
    if (r.has_training_mixture()) return Bad("training_mixture.sources", "must not be empty");
    RETURN_IF_ERROR(CheckIdField("training_file", r.training_file()));
  }
  RETURN_IF_ERROR(CheckMaskedThought(r.method().supervised().masked_thought()));
  RETURN_IF_ERROR(
      CheckIdField("validation_file", r.validation_file(), /*required=*/false));
  RETURN_IF_ERROR(CheckIdField("reports.general_file", r.reports().general_file(),
                               /*required=*/false));
  if (r.reports().has_intruder_top_k()) {
    const int k = r.reports().intruder_top_k();
    if (k < 0 || k > 64) return Bad("reports.intruder_top_k", absl::StrCat(k, " is out of range 0..64"));
    if (k > 0 && r.adapter() != v1::ADAPTER_TYPE_UNSPECIFIED && r.adapter() != v1::ADAPTER_TYPE_LORA) {
      return Bad("reports.intruder_top_k", "is for LoRA jobs (their adapted matrices)");
    }
  }
  if (r.reports().has_intruder_mitigation_lambda()) {
    const double l = r.reports().intruder_mitigation_lambda();
    if (!(Finite(l) && l >= 0 && l <= 1)) {
      return Bad("reports.intruder_mitigation_lambda", "must be in [0, 1] (PEFT's default 0.75)");
    }
    if ((r.adapter() != v1::ADAPTER_TYPE_UNSPECIFIED && r.adapter() != v1::ADAPTER_TYPE_LORA) ||
        MethodType(r.method()) == "prompt_tuning") {
      return Bad("reports.intruder_mitigation_lambda", "is for LoRA jobs (their adapted matrices)");
    }
    if (r.lora().use_dora()) {
      return Bad("reports.intruder_mitigation_lambda",
                 "is for LoRA without DoRA (the mitigation re-factorises B and A)");
    }
  }
  if (r.reports().has_intruder_epsilon() &&
      !(Finite(r.reports().intruder_epsilon()) && r.reports().intruder_epsilon() > 0 &&
        r.reports().intruder_epsilon() <= 1)) {
    return Bad("reports.intruder_epsilon", "must be in (0, 1]");
  }
  const std::string type = MethodType(r.method());
  if (std::find(std::begin(kMethodTypes), std::end(kMethodTypes), type) ==
      std::end(kMethodTypes)) {
    return Bad("method.type",
               absl::StrCat("\"", Echo(type), "\" is not supported (use ",
                            absl::StrJoin(kMethodTypes, ", "), ")"));
  }
  if ((r.has_training_mixture() || r.stages_size() > 0) && type != "supervised") {
    return Bad(r.stages_size() > 0 ? "stages" : "training_mixture",
               absl::StrCat("is for method.type \"supervised\", not \"", Echo(type), "\""));
  }
  // Only the named method's message may be set.
  const v1::Method& method = r.method();
  for (const auto& [name, set] :
       {std::pair<const char*, bool>{"supervised", method.has_supervised()},
        {"dpo", method.has_dpo()},
        {"orpo", method.has_orpo()},
        {"prompt_tuning", method.has_prompt_tuning()},
        {"rft", method.has_rft()},
        {"spin", method.has_spin()}}) {
    if (set && type != name) {
      return Bad(absl::StrCat("method.", name),
                 absl::StrCat("is for method.type \"", name,
                              "\"; this job's method.type is \"", type,
                              "\""));
    }
  }
  const v1::Hyperparameters& hp = MethodHyperparameters(method);
  const std::string kHp = HyperparametersPrefix(method);
  if (hp.has_n_epochs() && (hp.n_epochs() < 1 || hp.n_epochs() > 50)) {
    return Bad(kHp + "n_epochs",
               absl::StrCat(hp.n_epochs(), " is out of range 1..50"));
  }
  if (hp.has_batch_size() && (hp.batch_size() < 1 || hp.batch_size() > 256)) {
    return Bad(kHp + "batch_size",
               absl::StrCat(hp.batch_size(), " is out of range 1..256"));
  }
  if (hp.has_learning_rate_multiplier()) {
    double m = hp.learning_rate_multiplier();
    if (!std::isfinite(m) || m <= 0 || m > 100) {
      return Bad(kHp + "learning_rate_multiplier",
                 absl::StrCat(m, " must be finite and in (0, 100]"));
    }
  }
  struct IntRange {
    const char* field;
    bool set;
    int64_t value, min, max;
  };
  for (const IntRange& f : {
           IntRange{"warmup_steps", hp.has_warmup_steps(), hp.warmup_steps(), 0, 1'000'000},
           IntRange{"gradient_accumulation_steps", hp.has_gradient_accumulation_steps(),
                    hp.gradient_accumulation_steps(), 1, 1024},
           IntRange{"max_seq_len", hp.has_max_seq_len(), hp.max_seq_len(), 8, 131'072},
           IntRange{"eval_every_steps", hp.has_eval_every_steps(), hp.eval_every_steps(), 0,
                    1'000'000},
           IntRange{"checkpoint_every_steps", hp.has_checkpoint_every_steps(),
                    hp.checkpoint_every_steps(), 0, 1'000'000},
           IntRange{"max_prompt_len", hp.has_max_prompt_len(), hp.max_prompt_len(), 1,
                    131'071},
       }) {
    if (f.set && (f.value < f.min || f.value > f.max)) {
      return Bad(kHp + f.field,
                 absl::StrCat(f.value, " is out of range ", f.min, "..", f.max));
    }
  }
  if (hp.has_weight_decay() &&
      (!std::isfinite(hp.weight_decay()) || hp.weight_decay() < 0 || hp.weight_decay() > 1)) {
    return Bad(kHp + "weight_decay", "must be in [0, 1]");
  }
  if (hp.has_max_grad_norm() && (!std::isfinite(hp.max_grad_norm()) ||
                                 hp.max_grad_norm() <= 0 || hp.max_grad_norm() > 1e4)) {
    return Bad(kHp + "max_grad_norm", "must be in (0, 10000]");
  }
  if (!v1::LrScheduler_IsValid(hp.lr_scheduler())) {
    return Bad(kHp + "lr_scheduler", "unknown value");
  }
  if (hp.learning_rate() != 0) {
    return Bad(kHp + "learning_rate",
               "output only (the resolved peak rate); set learning_rate_multiplier");
  }
  RETURN_IF_ERROR(CheckPreferenceHyperparameters(type, hp, kHp));
  RETURN_IF_ERROR(CheckPromptTuning(r));
  RETURN_IF_ERROR(CheckS2ft(r));
  RETURN_IF_ERROR(CheckRft(r));
  RETURN_IF_ERROR(CheckSpin(r));
  if (!v1::AdapterType_IsValid(r.adapter())) return Bad("adapter", "unknown value");
  const auto& lora = r.lora();
  if (r.adapter() == v1::ADAPTER_TYPE_FULL && r.has_lora()) {
    return Bad("lora", "LoRA settings are for adapter LORA; full fine-tuning trains every weight");
  }
  if (lora.has_rank() && (lora.rank() < 1 || lora.rank() > 1024)) {
    return Bad("lora.rank", absl::StrCat(lora.rank(), " is out of range 1..1024"));
  }
  // Beyond this the adapter's scale (alpha / rank) overflows the training
  // arithmetic: 1e308 made every loss NaN at step 1.
  constexpr double kMaxAlpha = 65536;
  if (lora.has_alpha() && (!std::isfinite(lora.alpha()) || lora.alpha() <= 0 ||
                           lora.alpha() > kMaxAlpha)) {
    return Bad("lora.alpha", absl::StrCat("must be in (0, ", kMaxAlpha, "]"));
  }
  if (lora.has_dropout() && (!std::isfinite(lora.dropout()) ||
                             lora.dropout() < 0 || lora.dropout() >= 1)) {
    return Bad("lora.dropout", "must be in [0, 1)");
  }
  RETURN_IF_ERROR(CheckTargetModules("lora.target_modules", lora.target_modules()));
  for (int i = 0; i < lora.layers_to_transform_size(); ++i) {
    const int32_t layer = lora.layers_to_transform(i);
    const std::string field = absl::StrCat("lora.layers_to_transform[", i, "]");
    if (layer < 0 || layer >= 4096) {
      return Bad(field, absl::StrCat(layer, " is out of range 0..4095"));
    }
    for (int j = 0; j < i; ++j) {
      if (lora.layers_to_transform(j) == layer) {
        return Bad(field,
                   absl::StrCat(layer, " is already lora.layers_to_transform[",
                                j, "]"));
      }
    }
  }
  if (r.has_trainable()) RETURN_IF_ERROR(CheckTrainable(r));
  if (r.suffix().size() > 64) return Bad("suffix", "longer than 64 characters");
  for (char c : r.suffix()) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return Bad("suffix", "only letters, digits, '-' and '_' are allowed");
    }
  }
  RETURN_IF_ERROR(CheckMetadata({r.metadata().begin(), r.metadata().end()}));
  if (!v1::JobPriority_IsValid(r.priority())) {
    return Bad("priority", "unknown value");
  }
  RETURN_IF_ERROR(CheckDevices(r));
  if (r.idempotency_key().size() > 256) {
    return Bad("idempotency_key", "longer than 256 bytes");
  }
  return absl::OkStatus();
}

absl::Status CheckJobForModel(const v1::CreateJobRequest& r,
                              const v1::Model& model) {
  const int64_t layers = model.num_layers();
  if (layers <= 0) return absl::OkStatus();  // not known: the engine checks
  const v1::Trainable& t = r.trainable();
  const auto on = [&](const std::string& what) {
    return absl::StrCat(what, "; model ", r.model(), " has ", layers,
                        " layers (0-", layers - 1, ")");
  };
  if (t.has_lisa()) {
    const int32_t gamma = t.lisa().has_activated_layers()
                              ? t.lisa().activated_layers()
                              : kDefaultLisaLayers;
    if (gamma > layers) {
      return Bad("trainable.lisa.activated_layers",
                 on(absl::StrCat(
                     gamma, " layers at a time is more than the model has")));
    }
  }
  if (t.has_half_ft()) {
    const double fraction = t.half_ft().has_fraction() ? t.half_ft().fraction()
                                                       : kDefaultHalfFtFraction;
    if (HalfFtMatrixCounts(fraction, layers).total() == 0) {
      return Bad("trainable.half_ft.fraction",
                 on(absl::StrCat(fraction, " of its ",
                                 (kAttentionMatrices + kMlpMatrices) * layers,
                                 " matrices rounds to none")));
    }
  }
  absl::StatusOr<std::vector<int>> resolved =
      ResolveLayerRanges({t.layers().begin(), t.layers().end()},
                         static_cast<int>(layers), "trainable.layers");
  if (!resolved.ok()) return resolved.status();
  for (int i = 0; i < r.lora().layers_to_transform_size(); ++i) {
    if (r.lora().layers_to_transform(i) >= layers) {
      return Bad(absl::StrCat("lora.layers_to_transform[", i, "]"),
                 on(absl::StrCat("layer ", r.lora().layers_to_transform(i),
                                 " does not exist")));
    }
  }
  return absl::OkStatus();
}

namespace {

// A mixture's auto settings: WEIGHTED when a weight is set (else CONCAT),
// temperature 1, FIRST_EXHAUSTED, and per source weight 1, proportion 0,
// fraction 1 and its file id as its name.
void ResolveMixture(v1::Mixture& m) {
  if (m.strategy() == v1::MIXTURE_STRATEGY_UNSPECIFIED) {
    const bool weighted = std::any_of(m.sources().begin(), m.sources().end(),
                                      [](const v1::MixtureSource& s) { return s.has_weight(); });
    m.set_strategy(weighted ? v1::MIXTURE_STRATEGY_WEIGHTED : v1::MIXTURE_STRATEGY_CONCAT);
  }
  if (!m.has_temperature()) m.set_temperature(1);
  if (m.stop() == v1::MIXTURE_STOP_UNSPECIFIED) m.set_stop(v1::MIXTURE_STOP_FIRST_EXHAUSTED);
  for (v1::MixtureSource& s : *m.mutable_sources()) {
    if (!s.has_weight()) s.set_weight(1);
    if (!s.has_proportion()) s.set_proportion(0);
    if (!s.has_fraction()) s.set_fraction(1);
    if (s.name().empty()) s.set_name(s.file_id());
  }
}

}  // namespace

void FillJobDefaults(v1::Job& job, const JobDefaults& defaults) {
  if (job.devices() == 0) job.set_devices(kDefaultDevices);
  const std::string type = MethodType(job.method());
  job.mutable_method()->set_type(type);
  auto* hp = MutableMethodHyperparameters(*job.mutable_method());
  if (!hp->has_n_epochs()) hp->set_n_epochs(3);
  if (!hp->has_batch_size()) hp->set_batch_size(1);
  if (!hp->has_learning_rate_multiplier()) hp->set_learning_rate_multiplier(1);
  if (hp->learning_rate() == 0) {
    hp->set_learning_rate(defaults.base_learning_rate * hp->learning_rate_multiplier());
  }
  if (!hp->has_warmup_steps()) hp->set_warmup_steps(0);
  if (hp->lr_scheduler() == v1::LR_SCHEDULER_UNSPECIFIED) {
    hp->set_lr_scheduler(v1::LR_SCHEDULER_LINEAR);
  }
  if (!hp->has_weight_decay()) hp->set_weight_decay(0);
  if (!hp->has_gradient_accumulation_steps()) hp->set_gradient_accumulation_steps(1);
  if (!hp->has_max_seq_len()) hp->set_max_seq_len(kDefaultMaxSeqLen);
  if (!hp->has_eval_every_steps()) hp->set_eval_every_steps(0);
  if (!hp->has_max_grad_norm()) hp->set_max_grad_norm(1.0);
  if (!hp->has_checkpoint_every_steps()) {
    hp->set_checkpoint_every_steps(defaults.checkpoint_every_steps);
  }
  if (job.method().supervised().has_masked_thought()) {
    auto* mt = job.mutable_method()->mutable_supervised()->mutable_masked_thought();
    if (!mt->has_mask_rate()) mt->set_mask_rate(0.2);
    if (mt->schedule() == v1::MASK_RATE_SCHEDULE_UNSPECIFIED) {
      mt->set_schedule(v1::MASK_RATE_SCHEDULE_LINEAR_WARMUP);
    }
    if (!mt->has_warmup_ratio()) mt->set_warmup_ratio(2.0 / 3.0);
  }
  if (job.has_training_mixture()) ResolveMixture(*job.mutable_training_mixture());
  for (int i = 0; i < job.stages_size(); ++i) {
    v1::TrainingStage& stage = *job.mutable_stages(i);
    ResolveMixture(*stage.mutable_training_mixture());
    if (stage.name().empty()) stage.set_name(absl::StrCat("stage-", i + 1));
    if (!stage.has_n_epochs()) stage.set_n_epochs(hp->n_epochs());
  }
  if (TrainsOnPairs(type)) {
    if (!hp->has_beta()) hp->set_beta(0.1);  // TRL's, Together's and SPIN's
    if (!hp->has_max_prompt_len()) {
      hp->set_max_prompt_len(std::min(512, hp->max_seq_len() / 2));
    }
  }
  if (type == "spin") {
    auto* m = job.mutable_method()->mutable_spin();
    if (!m->has_iterations()) m->set_iterations(2);
    if (!m->has_temperature()) m->set_temperature(0);
    if (!m->has_top_p()) m->set_top_p(1);
    if (!m->has_max_new_tokens()) m->set_max_new_tokens(256);
    if (!m->has_accumulate_previous()) m->set_accumulate_previous(true);
  }
  if (type == "dpo" || type == "spin") {
    if (hp->loss_type() == v1::PREFERENCE_LOSS_UNSPECIFIED) {
      hp->set_loss_type(v1::PREFERENCE_LOSS_SIGMOID);
    }
    if (!hp->has_label_smoothing()) hp->set_label_smoothing(0);
    if (!hp->has_rpo_alpha()) hp->set_rpo_alpha(0);
  }
  if (type == "rft") {
    auto* m = job.mutable_method()->mutable_rft();
    if (!m->has_iterations()) m->set_iterations(1);
    if (!m->has_samples_per_prompt()) m->set_samples_per_prompt(4);
    if (!m->has_temperature()) m->set_temperature(0.7);
    if (!m->has_top_p()) m->set_top_p(1);
    if (!m->has_max_new_tokens()) m->set_max_new_tokens(256);
    if (m->answer_extractor().empty()) m->set_answer_extractor("gsm8k");
    if (m->dedupe().empty()) m->set_dedupe("equations");
    if (!m->has_include_gold()) m->set_include_gold(true);
    if (m->init().empty()) m->set_init("current");
  }
  if (type == "prompt_tuning") {
    job.set_adapter(v1::ADAPTER_TYPE_PROMPT_TUNING);
    auto* p = job.mutable_method()->mutable_prompt_tuning();
    if (!p->has_num_virtual_tokens()) p->set_num_virtual_tokens(20);
    if (p->init() == v1::PROMPT_TUNING_INIT_UNSPECIFIED) {
      p->set_init(v1::PROMPT_TUNING_INIT_RANDOM);
    }
  }
  if (job.adapter() == v1::ADAPTER_TYPE_UNSPECIFIED) job.set_adapter(v1::ADAPTER_TYPE_LORA);
  {
    v1::Reports& reports = *job.mutable_reports();
    const bool lora = job.adapter() == v1::ADAPTER_TYPE_LORA;
    if (!reports.has_intruder_top_k() || !lora) reports.set_intruder_top_k(lora ? 10 : 0);
    if (!reports.has_intruder_epsilon()) reports.set_intruder_epsilon(0.5);
  }
  if (job.has_trainable()) {
    v1::Trainable& t = *job.mutable_trainable();
    if (t.has_lisa()) {
      // LMFlow's defaults (METHODS.md §4.2).
      if (!t.lisa().has_activated_layers())
        t.mutable_lisa()->set_activated_layers(kDefaultLisaLayers);
      if (!t.lisa().has_interval_steps())
        t.mutable_lisa()->set_interval_steps(20);
    }
    if (t.has_half_ft()) {
      if (t.half_ft().reselect() == v1::HALF_FT_RESELECT_UNSPECIFIED) {
        t.mutable_half_ft()->set_reselect(v1::HALF_FT_RESELECT_STAGE);
      }
      if (!t.half_ft().has_seed()) t.mutable_half_ft()->set_seed(job.seed());
      if (!t.half_ft().has_fraction()) {
        t.mutable_half_ft()->set_fraction(kDefaultHalfFtFraction);
      }
      if (!t.half_ft().has_include_embeddings()) {
        t.mutable_half_ft()->set_include_embeddings(false);
      }
    }
  }
  if (job.adapter() == v1::ADAPTER_TYPE_S2FT) {
    v1::S2ftConfig& c = *job.mutable_s2ft();
    const bool none = !c.has_d_ratio() && !c.has_u_ratio() && !c.has_o_ratio() &&
                      !c.has_v_ratio();
    if (!c.has_d_ratio()) c.set_d_ratio(none ? 0.03 : 0);
    if (!c.has_u_ratio()) c.set_u_ratio(0);
    if (!c.has_o_ratio()) c.set_o_ratio(0);
    if (!c.has_v_ratio()) c.set_v_ratio(0);
    if (!c.has_seed()) c.set_seed(job.seed());
  }
  if (job.adapter() != v1::ADAPTER_TYPE_LORA) return;
  auto* lora = job.mutable_lora();
  if (!lora->has_rank()) lora->set_rank(8);
  if (!lora->has_alpha()) lora->set_alpha(2.0 * lora->rank());
  if (!lora->has_dropout()) lora->set_dropout(0);
  if (!lora->has_use_rslora()) lora->set_use_rslora(false);
  if (!lora->has_use_dora()) lora->set_use_dora(false);
  if (lora->target_modules().empty()) {
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) lora->add_target_modules(m);
  }
}

v1::Job ResolveJob(const v1::CreateJobRequest& r, const v1::File& training,
                   const v1::Model& model, const std::string& project,
                   const std::string& job_id, int64_t seed_if_unset,
                   const JobDefaults& defaults) {
  v1::Job job;
  job.set_id(job_id);
  job.set_project(project);
  job.set_priority(r.priority() == v1::JOB_PRIORITY_UNSPECIFIED
                       ? v1::JOB_PRIORITY_NORMAL
                       : r.priority());
  job.set_created_at(NowUnixSeconds());
  job.set_status(v1::JOB_STATUS_VALIDATING_FILES);
  job.set_model(r.model());
  job.set_devices(r.has_devices() ? r.devices() : kDefaultDevices);
  if (r.stages_size() > 0) {
    *job.mutable_stages() = r.stages();
    job.set_training_file(r.stages(0).training_mixture().sources(0).file_id());
  } else if (r.training_mixture().sources_size() > 0) {
    *job.mutable_training_mixture() = r.training_mixture();
    job.set_training_file(r.training_mixture().sources(0).file_id());
  } else {
    job.set_training_file(r.training_file());
  }
  job.set_validation_file(r.validation_file());
  if (MethodType(r.method()) == "analyze") {
    job.set_training_file(r.training_file());
    job.set_suffix(r.suffix());
    job.set_seed(r.has_seed() ? r.seed() : seed_if_unset);
    *job.mutable_metadata() = r.metadata();
    job.mutable_method()->set_type("analyze");
    v1::AnalyzeMethod& a = *job.mutable_method()->mutable_analyze();
    a = r.method().analyze();
    if (!a.has_max_seq_len()) a.set_max_seq_len(kDefaultMaxSeqLen);
    if (!a.has_batch_size()) a.set_batch_size(8);
    if (a.selection() == v1::ANALYZE_SELECTION_UNSPECIFIED) {
      a.set_selection(v1::ANALYZE_SELECTION_LOSS_QUANTILE);
    }
    // 0 and 1 select nothing by loss (another selection's).
    if (!a.has_loss_quantile_low()) a.set_loss_quantile_low(0);
    if (!a.has_loss_quantile_high()) a.set_loss_quantile_high(1);
    if (a.selection() == v1::ANALYZE_SELECTION_GOT_D) {
      // METHODS.md §8.1: ε 0.05-0.1 of the median cost; its upper end.
      if (!a.got_d().has_epsilon_fraction()) a.mutable_got_d()->set_epsilon_fraction(0.1);
    }
    if (a.selection() == v1::ANALYZE_SELECTION_CLEAR) {
      // METHODS.md §8.2 (BSDetector's constants, UNVERIFIED there): α 0.7,
      // k 5 samples at T 1; RFT's 256 new tokens.
      v1::ClearSelection& c = *a.mutable_clear();
      if (c.score() == v1::CLEAR_SCORE_UNSPECIFIED) c.set_score(v1::CLEAR_SCORE_CONFIDENCE);
      if (!c.has_alpha()) c.set_alpha(0.7);
      if (!c.has_samples()) c.set_samples(5);
      if (!c.has_temperature()) c.set_temperature(1);
      if (!c.has_max_new_tokens()) c.set_max_new_tokens(256);
      if (!c.has_drop_fraction()) c.set_drop_fraction(0);
    }
    job.set_adapter(v1::ADAPTER_TYPE_FULL);  // nothing trained: no adapter
    // The model in float32 on the device; a batch of lines' activations
    // is small beside it.
    job.set_memory_bytes(model.parameter_count() * 4);
    return job;
  }
  if (MethodType(r.method()) == "merge") {
    // No training: only the merge's own settings, resolved.
    job.set_suffix(r.suffix());
    job.set_seed(r.has_seed() ? r.seed() : seed_if_unset);
    *job.mutable_metadata() = r.metadata();
    job.mutable_method()->set_type("merge");
    v1::MergeMethod& m = *job.mutable_method()->mutable_merge();
    m = r.method().merge();
    if (m.merge_method().empty()) m.set_merge_method("linear");
    if (m.weights().empty() && m.merge_method() != "greedy_soup") {
      for (int i = 0; i < m.inputs_size(); ++i) m.add_weights(1);
    }
    if (!m.has_lambda()) m.set_lambda(1);
    if (!m.has_density()) m.set_density(1);
    if (m.majority_sign().empty()) m.set_majority_sign("total");
    if (!m.has_beta()) m.set_beta(0.9);
    if (!m.has_gamma()) m.set_gamma(0.01);
    if (!m.has_lines_alpha()) m.set_lines_alpha(1);
    if (!m.has_lines_beta()) m.set_lines_beta(0);
    if (m.has_lora_rank()) {
      // The result is the re-factorised adapter (alpha = rank: scale 1).
      job.set_adapter(v1::ADAPTER_TYPE_LORA);
      v1::LoraConfig& lora = *job.mutable_lora();
      lora.set_rank(m.lora_rank());
      lora.set_alpha(m.lora_rank());
      lora.set_dropout(0);
      lora.set_use_rslora(false);
      lora.set_use_dora(false);
      *lora.mutable_target_modules() = m.lora_target_modules();
    } else {
      job.set_adapter(v1::ADAPTER_TYPE_FULL);  // the result is a model folder
    }
    // Merging runs on the host: the device holds a float32 model only for
    // greedy_soup's validation losses.
    job.set_memory_bytes(m.merge_method() == "greedy_soup" ? model.parameter_count() * 4 : 0);
    return job;
  }
  *job.mutable_reports() = r.reports();
  job.set_suffix(r.suffix());
  job.set_seed(r.has_seed() ? r.seed() : seed_if_unset);
  *job.mutable_metadata() = r.metadata();

  auto* method = job.mutable_method();
  method->set_type(MethodType(r.method()));
  if (method->type() == "prompt_tuning") {
    *method->mutable_prompt_tuning() = r.method().prompt_tuning();
  }
  if (method->type() == "rft") *method->mutable_rft() = r.method().rft();
  if (method->type() == "spin") *method->mutable_spin() = r.method().spin();
  auto* hp = MutableMethodHyperparameters(*method);
  *hp = MethodHyperparameters(r.method());
  if (r.method().supervised().has_masked_thought()) {
    *method->mutable_supervised()->mutable_masked_thought() =
        r.method().supervised().masked_thought();
  }
  if (!hp->has_n_epochs()) hp->set_n_epochs(3);
  if (!hp->has_batch_size()) {
    // About 5% of the examples per step, within 1..8; at least one example
    // per worker, since the step's batch is split across them.
    hp->set_batch_size(static_cast<int32_t>(std::max<int64_t>(
        std::clamp<int64_t>(training.line_count() / 20, 1, 8), job.devices())));
  }
  if (!hp->has_learning_rate_multiplier()) hp->set_learning_rate_multiplier(1);
  job.set_adapter(r.adapter());
  if (r.adapter() != v1::ADAPTER_TYPE_FULL && r.adapter() != v1::ADAPTER_TYPE_S2FT &&
      method->type() != "prompt_tuning") {
    *job.mutable_lora() = r.lora();
  }
  if (r.adapter() == v1::ADAPTER_TYPE_S2FT) *job.mutable_s2ft() = r.s2ft();
  if (r.has_trainable()) *job.mutable_trainable() = r.trainable();
  FillJobDefaults(job, defaults);
  scheduler::TrainShape train;
  // A preference step runs both rows of each pair.
  train.batch_size = hp->batch_size() * (TrainsOnPairs(method->type()) ? 2 : 1);
  train.sequence_length = hp->max_seq_len();
  if (job.adapter() == v1::ADAPTER_TYPE_LORA) {
    train.method = scheduler::TrainMethod::kLora;
    train.lora_rank = job.lora().rank();
    train.lora_matrices_per_layer = job.lora().target_modules_size();
  } else if (job.adapter() == v1::ADAPTER_TYPE_PROMPT_TUNING) {
    // A frozen base and N x hidden trained values (fewer than any LoRA);
    // the virtual tokens lengthen every sequence.
    train.method = scheduler::TrainMethod::kLora;
    train.lora_rank = 1;
    train.lora_matrices_per_layer = 1;
    train.sequence_length += job.method().prompt_tuning().num_virtual_tokens();
  } else if (job.adapter() == v1::ADAPTER_TYPE_S2FT) {
    // A frozen base and the selected rows and columns: per layer about
    // (d + u) I C + (o + v) C C trained values, counted as one LoRA matrix
    // of the rank with as many (r x 2C).
    const v1::S2ftConfig& c = job.s2ft();
    const double per_layer =
        (c.d_ratio() + c.u_ratio()) * static_cast<double>(model.intermediate_size()) +
        (c.o_ratio() + c.v_ratio()) * static_cast<double>(model.hidden_size());
    train.method = scheduler::TrainMethod::kLora;
    train.lora_rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(per_layer / 2)));
    train.lora_matrices_per_layer = 1;
  } else {
    train.method = scheduler::TrainMethod::kFull;
    if (job.has_trainable()) {
      train.part = TrainedPartOf(job.trainable(), model.num_layers());
    }
  }
  scheduler::ModelShape shape;
  shape.parameters = model.parameter_count();
  shape.hidden_size = model.hidden_size();
  shape.num_layers = model.num_layers();
  shape.vocab_size = model.vocab_size();
  shape.bytes_per_weight = model.bytes_per_weight() > 0 ? model.bytes_per_weight() : 2;
  shape.intermediate_size = model.intermediate_size();
  shape.attention_size = model.num_attention_heads() * model.head_dim();
  shape.kv_size = model.num_key_value_heads() * model.head_dim();
  shape.tied_embeddings = model.tie_word_embeddings();
  // Per worker: each rank of a gang holds the model; the whole step's batch
  // is counted, an upper bound for a rank's share of it.
  job.set_memory_bytes(scheduler::EstimateMemoryBytes(shape, train));
  // LoRA and prompt tuning leave the base frozen and apart: a worker can
  // train several such jobs of one base over one copy of it.
  if ((job.adapter() == v1::ADAPTER_TYPE_LORA ||
       job.adapter() == v1::ADAPTER_TYPE_PROMPT_TUNING) &&
      job.devices() <= 1 && !model.content_sha256().empty()) {
    job.set_shared_memory_bytes(scheduler::SharedBaseBytes(shape, train));
    job.set_base_sha256(model.content_sha256());
  }
  return job;
}

absl::Status CheckJobFiles(const v1::CreateJobRequest& r,
                           const v1::File& training,
                           const v1::File* validation) {
  const std::string type = MethodType(r.method());
  const bool preference = IsPreferenceMethod(type);
  for (const auto& [field, file] :
       {std::pair<const char*, const v1::File*>{"training_file", &training},
        {"validation_file", validation}}) {
    // Files uploaded before the format was recorded have none: the worker
    // reports a mismatch there.
    if (file == nullptr || file->format().empty()) continue;
    if (preference && file->format() != "preference") {
      return Bad(field, absl::StrCat(file->id(), " holds ", file->format(),
                                     " data; method ", type,
                                     " trains on preference data (lines "
                                     "with input, preferred_output and "
                                     "non_preferred_output)"));
    }
    if (type == "rft" && field == std::string("training_file") && file->format() == "text") {
      return Bad(field, absl::StrCat(file->id(),
                                     " holds text data; method rft samples replies to "
                                     "prompts: give chat or prompt/completion lines whose "
                                     "last reply is the gold one"));
    }
    if (type == "spin" && field == std::string("training_file") && file->format() != "chat" &&
        file->format() != "preference") {
      return Bad(field, absl::StrCat(file->id(), " holds ", file->format(),
                                     " data; method spin generates replies to chat "
                                     "prompts: give chat lines whose last reply is the "
                                     "real one"));
    }
    if (!preference && file->format() == "preference") {
      return Bad(field, absl::StrCat(file->id(),
                                     " holds preference data; it is for "
                                     "method.type \"dpo\" or \"orpo\" "
                                     "(method ",
                                     type, " trains on chat, "
                                     "prompt/completion or text data)"));
    }
  }
  return absl::OkStatus();
}

std::string RequestFingerprint(const v1::CreateJobRequest& request) {
  v1::CreateJobRequest copy = request;
  copy.clear_idempotency_key();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    copy.SerializeToCodedStream(&coded);
  }
  return Sha256Hex(bytes);
}

}  // namespace lathe
