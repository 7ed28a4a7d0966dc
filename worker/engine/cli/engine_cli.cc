#include "worker/engine/cli/engine_cli.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <type_traits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/adapters/s2ft.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/inference/analyze.h"
#include "worker/engine/inference/generate.h"
#include "worker/engine/reports/reports.h"
#include "worker/engine/inference/score.h"
#include "worker/engine/merge/merge.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/text/chat_template.h"
#include "worker/engine/text/json_file.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

constexpr char kUsage[] =
    "usage:\n"
    "  %1$s train SPEC.json       run a spec locally (spec/run_spec.h)\n"
    "  %1$s make-demo --out DIR   write a tiny demo model and data set\n"
    "  %1$s tokenize --model DIR (--text STR | --chat FILE.jsonl) [-o json]\n"
    "      [--add-special-tokens] [--chat-template NAME]\n"
    "      [--mask assistant|last|all]\n"
    "  %1$s score --model DIR [--adapter DIR] --data FILE.jsonl [-o json]\n"
    "      [--device cpu|cuda|auto] [--dtype float32|bfloat16|auto]\n"
    "      [--logits-out FILE.safetensors] [--chat-template NAME]\n"
    "      [--mask assistant|last|all]\n"
    "  %1$s generate --model DIR [--adapter DIR] (--prompt STR | --chat FILE)\n"
    "      [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]\n"
    "      [--chat-template NAME]\n"
    "      [--expert DIR [--expert-adapter DIR] --anti-expert DIR [--alpha A]]\n"
    "  --expert/--anti-expert: EFT / proxy tuning, each step's logits are\n"
    "  model + A x (expert - anti-expert) (A = 1); same tokenizer required.\n"
    "  %1$s analyze --model DIR [--adapter DIR] --data FILE.jsonl --out DIR\n"
    "      [--validation FILE] [--max-seq-len N] [--batch-size N] [--keep-duplicates]\n"
    "      [--select loss_quantile|got_d|clear] [--select-loss-quantile LO,HI]\n"
    "      got_d: --target FILE.jsonl --budget N [--epsilon-fraction F]\n"
    "             [--shard-size N] (random shards of a large pool; --seed)\n"
    "      clear: [--score confidence|log_likelihood] [--threshold T]\n"
    "             [--drop-fraction Q] [--alpha A] [--samples K] [--temperature T]\n"
    "             [--max-new-tokens N] [--answer-extractor KIND [--answer-pattern RE]]\n"
    "             [--seed S]\n"
    "  %1$s s2ft-apply --model DIR --diff DIR --out DIR [--revert]\n"
    "      the base with an S2FT job's sparse diff added (subtracted), as a\n"
    "      model folder\n"
    "  %1$s merge --base DIR --inputs DIR,DIR,... --out DIR\n"
    "      [--method linear|task_arithmetic|ties|dare_linear|dare_ties|\n"
    "                breadcrumbs|lines|greedy_soup] [--weights W,W,...]\n"
    "      [--lambda L] [--density D] [--majority-sign total|frequency]\n"
    "      [--beta B] [--gamma G] [--lines-alpha A] [--lines-beta B]\n"
    "      [--seed S] [--lora-out DIR --lora-rank R\n"
    "      [--lora-target-modules q_proj,v_proj,...]]\n"
    "      [--validation-file FILE.jsonl] [--chat-template NAME]\n"
    "      [--max-seq-len N] [--device cpu|cuda|auto] [--dtype ...]\n"
    "  --add-special-tokens (with --text) adds what Hugging Face's\n"
    "  encode(text) adds by default (BOS for Llama 2, Mistral, TinyLlama).\n"
    "  --chat-template names the family (zephyr, llama3, chatml, mistral)\n"
    "  instead of recognizing tokenizer_config.json's chat_template; --mask\n"
    "  picks the chat tokens scored: every assistant turn (default), the\n"
    "  last one, or all tokens. merge inputs are model folders or PEFT\n"
    "  LoRA adapters on the base (docs/merging.md).\n";

int Fail(const absl::Status& status) {
  std::cerr << "error: " << status << "\n";
  return 1;
}

int TrainCommand(const std::string& spec_path) {
  absl::StatusOr<Json> spec = ReadJsonFile(spec_path);
  if (!spec.ok()) return Fail(spec.status());
  const std::string base_dir =
      std::filesystem::absolute(spec_path).parent_path().string();
  absl::StatusOr<RunSpec> options = ParseRunSpec(*spec, base_dir);
  if (!options.ok()) return Fail(options.status());
  spdlog::info("train spec: {}", RunSpecJson(*options).dump());
  TrainHooks hooks;
  hooks.on_step = [](const StepMetrics& m) {
    Json line = {{"step", m.step},
                 {"total_steps", m.total_steps},
                 {"loss", m.loss},
                 {"token_accuracy", m.token_accuracy},
                 {"learning_rate", m.learning_rate},
                 {"grad_norm", m.grad_norm},
                 {"tokens_per_second", m.tokens_per_second},
                 {"trained_tokens", m.trained_tokens}};
    if (m.validation_loss) line["validation_loss"] = *m.validation_loss;
    if (m.validation_accuracy)
      line["validation_accuracy"] = *m.validation_accuracy;
    std::cout << line.dump() << std::endl;
  };
  absl::StatusOr<TrainResult> result = Train(*options, hooks);
  if (!result.ok()) return Fail(result.status());
  Json summary = {{"steps", result->steps},
                  {"trained_tokens", result->trained_tokens},
                  {"padding_tokens", result->padding_tokens},
                  {"loss_peak_bytes", result->loss_peak_bytes},
                  {"truncated_examples", result->truncated_examples},
                  {"first_loss", result->first_loss},
                  {"last_loss", result->last_loss},
                  {"adapter_dir", options->output.dir}};
  if (result->validation_loss.has_value()) {
    summary["validation_loss"] = *result->validation_loss;
  }
  std::cout << Json{{"summary", summary}}.dump() << std::endl;
  return 0;
}

// Flags that take no value; present means "true".
const std::vector<std::string> kSwitches = {"--add-special-tokens", "--keep-duplicates", "--revert"};

// "--name value" flags (and switches) after the subcommand. nullopt (usage
// error) for a flag not in `known`, a repeated one, or one without a value.
std::optional<std::map<std::string, std::string>> ParseFlags(
    int argc, char** argv, const std::vector<std::string>& known) {
  std::map<std::string, std::string> flags;
  for (int i = 2; i < argc; ++i) {
    const std::string name = argv[i];
    const bool is_switch =
        std::find(kSwitches.begin(), kSwitches.end(), name) != kSwitches.end();
    if ((!is_switch && i + 1 >= argc) ||
        std::find(known.begin(), known.end(), name) == known.end() ||
        !flags.emplace(name, is_switch ? "true" : argv[++i]).second) {
      return std::nullopt;
    }
  }
  if (flags.count("-o") && flags["-o"] != "json") return std::nullopt;
  return flags;
}

std::string Flag(const std::map<std::string, std::string>& flags,
                 const std::string& name) {
  auto it = flags.find(name);
  return it == flags.end() ? "" : it->second;
}

// Sets *value from flag `name` when it is given. INVALID_ARGUMENT when it
// is not a number of *value's type.
template <typename T>
absl::Status NumberFlag(const std::map<std::string, std::string>& flags,
                        const char* name, T* value) {
  const std::string text = Flag(flags, name);
  bool ok = true;
  if constexpr (std::is_floating_point_v<T>) {
    ok = text.empty() || absl::SimpleAtod(text, value);
  } else {
    ok = text.empty() || absl::SimpleAtoi(text, value);
  }
  return ok ? absl::OkStatus()
            : absl::InvalidArgumentError(
                  absl::StrCat(name, " is not a number: ", text));
}

// A comma-separated flag's items ("a,b" -> {"a", "b"}); {} when absent.
std::vector<std::string> ListFlag(
    const std::map<std::string, std::string>& flags, const std::string& name) {
  return absl::StrSplit(Flag(flags, name), ',', absl::SkipEmpty());
}

enum class MaskMode { kAssistant, kLast, kAll };

// The model folder's tokenizer and chat template (the family named by
// --chat-template, else recognized).
struct TextSetup {
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  MaskMode mask = MaskMode::kAssistant;
};

absl::StatusOr<TextSetup> LoadText(
    const std::map<std::string, std::string>& flags, bool needs_template) {
  TextSetup setup;
  ASSIGN_OR_RETURN(setup.tokenizer, Tokenizer::Load(Flag(flags, "--model")));
  const std::string name = Flag(flags, "--chat-template");
  if (needs_template || !name.empty()) {
    ASSIGN_OR_RETURN(setup.chat_template,
                     ChatTemplateFor(*setup.tokenizer, name));
  }
  const std::string mask = Flag(flags, "--mask");
  if (mask == "last") {
    setup.mask = MaskMode::kLast;
  } else if (mask == "all") {
    setup.mask = MaskMode::kAll;
  } else if (!mask.empty() && mask != "assistant") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--mask must be assistant, last or all, not \"", mask, "\""));
  }
  return setup;
}

// A data line as an example under --mask; *rendered gets a chat line's
// rendered text.
absl::StatusOr<Example> MakeExample(const TextSetup& setup,
                                    const DataRecord& record,
                                    std::string* rendered) {
  if (record.format != DataFormat::kChat) {
    ASSIGN_OR_RETURN(
        Example e,
        TokenizeRecord(*setup.tokenizer,
                       setup.chat_template ? &*setup.chat_template : nullptr,
                       record));
    if (setup.mask == MaskMode::kAll) {
      e.loss_mask.assign(e.ids.size(), 1);
      e.loss_mask[0] = 0;
    }
    return e;
  }
  ASSIGN_OR_RETURN(
      TokenizedChat chat,
      TokenizeChat(*setup.tokenizer, *setup.chat_template, record.messages));
  *rendered = chat.text;
  int last = -1;
  for (size_t i = 0; i < record.messages.size(); ++i) {
    if (record.messages[i].role == "assistant") last = static_cast<int>(i);
  }
  Example e;
  e.ids = std::move(chat.ids);
  for (int m : chat.message) {
    const bool on = setup.mask == MaskMode::kAll ||
                    (setup.mask == MaskMode::kAssistant && m >= 0) ||
                    (setup.mask == MaskMode::kLast && m == last);
    e.loss_mask.push_back(on ? 1 : 0);
  }
  if (!e.loss_mask.empty()) e.loss_mask[0] = 0;
  return e;
}

absl::Status TokenizeCommand(const std::map<std::string, std::string>& flags) {
  const std::string text = Flag(flags, "--text");
  const std::string chat = Flag(flags, "--chat");
  if (flags.count("--text") == flags.count("--chat")) {
    return absl::InvalidArgumentError("give one of --text and --chat");
  }
  const bool add_special_tokens = flags.count("--add-special-tokens") > 0;
  if (add_special_tokens && !chat.empty()) {
    return absl::InvalidArgumentError(
        "--add-special-tokens is for --text (data lines are encoded as "
        "training encodes them)");
  }
  if (chat.empty()) {
    ASSIGN_OR_RETURN(TextSetup setup, LoadText(flags, false));
    ASSIGN_OR_RETURN(Encoding e,
                     add_special_tokens
                         ? setup.tokenizer->EncodeWithSpecialTokens(text)
                         : setup.tokenizer->Encode(text));
    std::cout << Json{{"input_ids", e.ids}}.dump() << std::endl;
    return absl::OkStatus();
  }
  // The data file may be of any format (see chat_data.h).
  ASSIGN_OR_RETURN(std::vector<DataRecord> records, ReadDataJsonl(chat));
  ASSIGN_OR_RETURN(TextSetup setup,
                   LoadText(flags, records[0].format == DataFormat::kChat));
  for (const DataRecord& record : records) {
    std::string rendered;
    ASSIGN_OR_RETURN(Example e, MakeExample(setup, record, &rendered));
    Json line = {{"line", record.line},
                 {"input_ids", e.ids},
                 {"loss_mask", e.loss_mask}};
    if (record.format == DataFormat::kChat) line["rendered"] = rendered;
    std::cout << line.dump() << std::endl;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LoadModel(
    const std::map<std::string, std::string>& flags) {
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                   LlamaModel::Load(Flag(flags, "--model")));
  DeviceSpec device{.device = "cpu", .dtype = "auto"};
  if (!Flag(flags, "--device").empty()) device.device = Flag(flags, "--device");
  if (!Flag(flags, "--dtype").empty()) device.dtype = Flag(flags, "--dtype");
  ASSIGN_OR_RETURN(const Placement placement, ResolvePlacement(device));
  model->Place(placement.device, placement.compute, placement.compute);
  if (!Flag(flags, "--adapter").empty()) {
    RETURN_IF_ERROR(LoadTrained(*model, Flag(flags, "--adapter")).status());
  }
  return model;
}

// A JSON number, or null for NaN (JSON has no NaN).
Json Number(double x) { return std::isnan(x) ? Json(nullptr) : Json(x); }

absl::Status ScoreCommand(const std::map<std::string, std::string>& flags) {
  const std::string data = Flag(flags, "--data");
  if (data.empty()) return absl::InvalidArgumentError("--data is required");
  ASSIGN_OR_RETURN(std::vector<DataRecord> records, ReadDataJsonl(data));
  ASSIGN_OR_RETURN(TextSetup setup,
                   LoadText(flags, records[0].format == DataFormat::kChat));
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LoadModel(flags));
  for (size_t i = 0; i < records.size(); ++i) {
    std::string rendered;
    ASSIGN_OR_RETURN(Example e, MakeExample(setup, records[i], &rendered));
    absl::StatusOr<Scores> scores = ScoreExample(*model, e);
    if (!scores.ok()) {
      return absl::Status(scores.status().code(),
                          absl::StrCat(data, ":", records[i].line, ": ",
                                       scores.status().message()));
    }
    Json logprobs = Json::array();
    for (double lp : scores->logprobs) logprobs.push_back(Number(lp));
    std::cout << Json{{"line", records[i].line},
                      {"input_ids", e.ids},
                      {"loss_mask", e.loss_mask},
                      {"logprobs", logprobs},
                      {"loss", Number(scores->loss)},
                      {"loss_all", Number(scores->loss_all)}}
                     .dump()
              << std::endl;
    if (i == 0 && !Flag(flags, "--logits-out").empty()) {
      RETURN_IF_ERROR(SaveSafetensors(Flag(flags, "--logits-out"),
                                      {{"logits", scores->logits}}, {}));
    }
  }
  return absl::OkStatus();
}

// analyze: the curation report of a data file (inference/analyze.h).
absl::Status AnalyzeCommand(const std::map<std::string, std::string>& flags) {
  AnalyzeSpec spec{.model_dir = Flag(flags, "--model"),
                   .adapter_dir = Flag(flags, "--adapter"),
                   .data_file = Flag(flags, "--data"),
                   .validation_file = Flag(flags, "--validation"),
                   .chat_template = Flag(flags, "--chat-template"),
                   .keep_duplicates = flags.count("--keep-duplicates") > 0,
                   .out_dir = Flag(flags, "--out")};
  if (spec.data_file.empty() || spec.out_dir.empty()) {
    return absl::InvalidArgumentError("--data and --out are required");
  }
  if (!Flag(flags, "--max-seq-len").empty() &&
      !absl::SimpleAtoi(Flag(flags, "--max-seq-len"), &spec.max_seq_len)) {
    return absl::InvalidArgumentError("--max-seq-len: a number of at least 2");
  }
  if (const std::string q = Flag(flags, "--select-loss-quantile"); !q.empty()) {
    std::vector<std::string> parts = absl::StrSplit(q, ',');
    if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &spec.loss_quantile_low) ||
        !absl::SimpleAtod(parts[1], &spec.loss_quantile_high)) {
      return absl::InvalidArgumentError(
          "--select-loss-quantile: LO,HI with 0 <= LO < HI <= 1, e.g. 0.05,0.95");
    }
  }
  RETURN_IF_ERROR(NumberFlag(flags, "--batch-size", &spec.batch_size));
  if (const std::string select = Flag(flags, "--select"); select == "got_d") {
    spec.select = AnalyzeSelection::kGotD;
  } else if (select == "clear") {
    spec.select = AnalyzeSelection::kClear;
  } else if (!select.empty() && select != "loss_quantile") {
    return absl::InvalidArgumentError("--select: loss_quantile, got_d or clear");
  }
  spec.got_d.target_file = Flag(flags, "--target");
  RETURN_IF_ERROR(NumberFlag(flags, "--budget", &spec.got_d.budget));
  RETURN_IF_ERROR(NumberFlag(flags, "--epsilon-fraction", &spec.got_d.epsilon_fraction));
  RETURN_IF_ERROR(NumberFlag(flags, "--shard-size", &spec.got_d.shard_size));
  RETURN_IF_ERROR(NumberFlag(flags, "--seed", &spec.got_d.seed));
  ClearSelection& clear = spec.clear;
  if (const std::string score = Flag(flags, "--score"); score == "log_likelihood") {
    clear.filter.score = ClearScore::kLogLikelihood;
  } else if (!score.empty() && score != "confidence") {
    return absl::InvalidArgumentError("--score: confidence or log_likelihood");
  }
  if (!Flag(flags, "--threshold").empty()) {
    double threshold = 0;
    RETURN_IF_ERROR(NumberFlag(flags, "--threshold", &threshold));
    clear.filter.threshold = threshold;
  }
  RETURN_IF_ERROR(NumberFlag(flags, "--drop-fraction", &clear.filter.drop_fraction));
  RETURN_IF_ERROR(NumberFlag(flags, "--alpha", &clear.filter.alpha));
  RETURN_IF_ERROR(NumberFlag(flags, "--samples", &clear.consistency.samples));
  RETURN_IF_ERROR(NumberFlag(flags, "--temperature", &clear.consistency.temperature));
  RETURN_IF_ERROR(NumberFlag(flags, "--max-new-tokens", &clear.consistency.max_new_tokens));
  RETURN_IF_ERROR(NumberFlag(flags, "--seed", &clear.consistency.seed));
  clear.answer_extractor = {.kind = Flag(flags, "--answer-extractor"),
                            .pattern = Flag(flags, "--answer-pattern")};
  if (!Flag(flags, "--device").empty()) spec.device.device = Flag(flags, "--device");
  if (!Flag(flags, "--dtype").empty()) spec.device.dtype = Flag(flags, "--dtype");
  ASSIGN_OR_RETURN(const AnalyzeSummary summary, AnalyzeData(spec));
  std::cout << Json{{"summary",
                     {{"examples", summary.examples},
                      {"kept", summary.kept},
                      {"truncated", summary.truncated},
                      {"exact_duplicates", summary.exact_duplicates},
                      {"near_duplicates", summary.near_duplicates},
                      {"validation_overlaps", summary.validation_overlaps},
                      {"loss_quantiles", {{"low", summary.loss_low}, {"high", summary.loss_high}}},
                      {"got_d",
                       spec.select == AnalyzeSelection::kGotD
                           ? Json{{"epsilon", summary.got_d_epsilon},
                                  {"iterations", summary.got_d_iterations},
                                  {"marginal_error", summary.got_d_marginal_error},
                                  {"shards", summary.got_d_shards}}
                           : Json(nullptr)},
                      {"report", spec.out_dir + "/report.jsonl"},
                      {"selected", spec.out_dir + "/selected.jsonl"}}}}
                   .dump()
            << std::endl;
  return absl::OkStatus();
}

// OK when `other` (a model folder) has the tokenizer files of `model`,
// byte for byte; INVALID_ARGUMENT naming `flag` otherwise.
absl::Status SameTokenizer(const std::string& model, const std::string& other,
                           const char* flag) {
  auto read = [](const std::string& path) -> std::optional<std::string> {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  bool compared = false;
  for (const char* file : {"tokenizer.json", "tokenizer.model"}) {
    const std::optional<std::string> a = read(model + "/" + file);
    const std::optional<std::string> b = read(other + "/" + file);
    if (!a.has_value() && !b.has_value()) continue;
    if (a != b) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag, ": ", other, "'s ", file, " differs from --model's: logit "
          "fusion adds logits token by token, so the models must share a "
          "tokenizer"));
    }
    compared = true;
  }
  if (!compared) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": ", other, " has no tokenizer.json or tokenizer.model to "
        "compare with --model's"));
  }
  return absl::OkStatus();
}

absl::Status GenerateCommand(const std::map<std::string, std::string>& flags) {
  if (flags.count("--prompt") == flags.count("--chat")) {
    return absl::InvalidArgumentError("give one of --prompt and --chat");
  }
  GenerateOptions options;
  auto number = [&](const char* name, auto* value) {
    return NumberFlag(flags, name, value);
  };
  RETURN_IF_ERROR(number("--max-new-tokens", &options.max_new_tokens));
  RETURN_IF_ERROR(number("--temperature", &options.temperature));
  RETURN_IF_ERROR(number("--top-p", &options.top_p));
  RETURN_IF_ERROR(number("--seed", &options.seed));
  const std::string chat = Flag(flags, "--chat");
  ASSIGN_OR_RETURN(TextSetup setup, LoadText(flags, !chat.empty()));
  const Tokenizer& tokenizer = *setup.tokenizer;
  std::string prompt = Flag(flags, "--prompt");
  options.stop_ids = ReplyStopIds(
      tokenizer, chat.empty() ? nullptr : &*setup.chat_template);
  if (!chat.empty()) {
    // The first conversation, up to its last user turn.
    ASSIGN_OR_RETURN(std::vector<Conversation> conversations,
                     ReadChatJsonl(chat));
    std::vector<ChatMessage> messages = conversations[0].messages;
    while (!messages.empty() && messages.back().role == "assistant") {
      messages.pop_back();
    }
    prompt = setup.chat_template->RenderPrompt(messages);
  }
  ASSIGN_OR_RETURN(Encoding encoding, tokenizer.Encode(prompt));
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LoadModel(flags));
  // EFT / proxy tuning: --expert and --anti-expert, small models of the
  // same tokenizer (the expert optionally a LoRA adapter on its folder).
  std::unique_ptr<LlamaModel> expert, anti_expert;
  std::optional<LogitFusion> fusion;
  if (flags.count("--expert") != flags.count("--anti-expert")) {
    return absl::InvalidArgumentError(
        "logit fusion needs both --expert (the small fine-tuned model) and "
        "--anti-expert (its base)");
  }
  if (flags.count("--expert") == 0 &&
      (flags.count("--alpha") || flags.count("--expert-adapter"))) {
    return absl::InvalidArgumentError(
        "--alpha and --expert-adapter go with --expert and --anti-expert");
  }
  if (flags.count("--expert")) {
    const std::string model_dir = Flag(flags, "--model");
    for (const char* flag : {"--expert", "--anti-expert"}) {
      RETURN_IF_ERROR(SameTokenizer(model_dir, Flag(flags, flag), flag));
    }
    auto small = [&](const char* flag, const std::string& adapter) {
      std::map<std::string, std::string> f = flags;
      f["--model"] = Flag(flags, flag);
      f["--adapter"] = adapter;
      return LoadModel(f);
    };
    ASSIGN_OR_RETURN(expert, small("--expert", Flag(flags, "--expert-adapter")));
    ASSIGN_OR_RETURN(anti_expert, small("--anti-expert", ""));
    fusion = LogitFusion{.expert = expert.get(), .anti_expert = anti_expert.get()};
    RETURN_IF_ERROR(number("--alpha", &fusion->alpha));
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> output,
                   Generate(*model, encoding.ids, options,
                            fusion.has_value() ? &*fusion : nullptr));
  ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(output));
  std::cout << Json{{"prompt", prompt},
                    {"prompt_ids", encoding.ids},
                    {"output_ids", output},
                    {"text", text}}
                   .dump()
            << std::endl;
  return absl::OkStatus();
}

// The flags of `merge` as a MergeSpec.
absl::StatusOr<MergeSpec> MergeSpecFromFlags(
    const std::map<std::string, std::string>& flags) {
  MergeSpec spec;
  spec.base_dir = Flag(flags, "--base");
  spec.output_dir = Flag(flags, "--out");
  for (const std::string& dir : ListFlag(flags, "--inputs")) {
    spec.inputs.push_back({.dir = dir});
  }
  MergeParams& p = spec.params;
  if (flags.count("--method")) {
    ASSIGN_OR_RETURN(p.method, ParseMergeMethod(Flag(flags, "--method")));
  }
  if (flags.count("--majority-sign")) {
    ASSIGN_OR_RETURN(p.majority_sign,
                     ParseMajoritySign(Flag(flags, "--majority-sign")));
  }
  for (const std::string& text : ListFlag(flags, "--weights")) {
    double w = 0;
    if (!absl::SimpleAtod(text, &w)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--weights: not a number: ", text));
    }
    p.weights.push_back(w);
  }
  RETURN_IF_ERROR(NumberFlag(flags, "--lambda", &p.lambda));
  RETURN_IF_ERROR(NumberFlag(flags, "--density", &p.density));
  RETURN_IF_ERROR(NumberFlag(flags, "--beta", &p.beta));
  RETURN_IF_ERROR(NumberFlag(flags, "--gamma", &p.gamma));
  RETURN_IF_ERROR(NumberFlag(flags, "--lines-alpha", &p.lines_alpha));
  RETURN_IF_ERROR(NumberFlag(flags, "--lines-beta", &p.lines_beta));
  RETURN_IF_ERROR(NumberFlag(flags, "--seed", &p.seed));
  spec.lora.dir = Flag(flags, "--lora-out");
  RETURN_IF_ERROR(NumberFlag(flags, "--lora-rank", &spec.lora.rank));
  spec.lora.target_modules = ListFlag(flags, "--lora-target-modules");
  spec.soup.validation_file = Flag(flags, "--validation-file");
  spec.soup.chat_template = Flag(flags, "--chat-template");
  RETURN_IF_ERROR(NumberFlag(flags, "--max-seq-len", &spec.soup.max_seq_len));
  if (flags.count("--device"))
    spec.soup.device.device = Flag(flags, "--device");
  if (flags.count("--dtype")) spec.soup.device.dtype = Flag(flags, "--dtype");
  return spec;
}

// Prints {"tensor": i, "total": n, "name": ...} per merged tensor,
// {"soup_step": {...}} per greedy soup step, then {"summary": {...}}.
absl::Status MergeCommand(const std::map<std::string, std::string>& flags) {
  ASSIGN_OR_RETURN(const MergeSpec spec, MergeSpecFromFlags(flags));
  auto input_name = [&](int i) { return spec.inputs[i].dir; };
  MergeHooks hooks;
  hooks.on_tensor = [](int64_t done, int64_t total, const std::string& name) {
    std::cout << Json{{"tensor", done}, {"total", total}, {"name", name}}.dump()
              << std::endl;
  };
  hooks.on_soup_step = [&](const SoupStep& step) {
    Json line = {
        {"phase", step.phase == SoupStep::Phase::kScored ? "scored" : "tried"},
        {"input", input_name(step.input)},
        {"input_loss", Number(step.input_loss)},
        {"best_loss", Number(step.best_loss)},
        {"soup_size", step.soup_size}};
    if (step.phase == SoupStep::Phase::kTried) {
      line["soup_loss"] = Number(step.soup_loss);
      line["kept"] = step.kept;
    }
    std::cout << Json{{"soup_step", line}}.dump() << std::endl;
  };
  ASSIGN_OR_RETURN(const MergeResult result, RunMerge(spec, hooks));
  Json merged = Json::array();
  for (int i : result.merged_inputs) merged.push_back(input_name(i));
  Json summary = {{"method", MergeMethodName(spec.params.method)},
                  {"tensors", result.tensors},
                  {"merged_inputs", merged},
                  {"output_dir", spec.output_dir}};
  if (result.validation_loss) {
    summary["validation_loss"] = Number(*result.validation_loss);
  }
  if (!spec.lora.dir.empty()) {
    summary["lora_dir"] = spec.lora.dir;
    summary["lora_target_modules"] = result.lora_target_modules;
    summary["lora_dropped_tensors"] = result.lora_dropped;
  }
  std::cout << Json{{"summary", summary}}.dump() << std::endl;
  return absl::OkStatus();
}

absl::Status S2ftApplyCommand(const std::map<std::string, std::string>& flags) {
  if (Flag(flags, "--diff").empty() || Flag(flags, "--out").empty()) {
    return absl::InvalidArgumentError("s2ft-apply needs --model, --diff and --out");
  }
  const bool revert = flags.count("--revert") != 0;
  RETURN_IF_ERROR(ApplyS2ftDiff(Flag(flags, "--model"), Flag(flags, "--diff"),
                                Flag(flags, "--out"), revert));
  std::cout << Json{{"model", Flag(flags, "--model")},
                    {"diff", Flag(flags, "--diff")},
                    {"out", Flag(flags, "--out")},
                    {"reverted", revert}}
                   .dump()
            << std::endl;
  return absl::OkStatus();
}

}  // namespace

int RunEngineCommand(int argc, char** argv) {
  try {
    // stdout carries the JSON lines; logs go to stderr.
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "engine", std::make_shared<spdlog::sinks::stderr_color_sink_mt>()));
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "train" && argc == 3) return TrainCommand(argv[2]);
    if (command == "make-demo" && argc == 4 &&
        std::string(argv[2]) == "--out") {
      absl::Status status = MakeDemo(argv[3]);
      if (!status.ok()) return Fail(status);
      std::cout << "demo written to " << argv[3] << "; try: " << argv[0]
                << " train " << argv[3] << "/spec.json\n";
      return 0;
    }
    using Command = absl::Status (*)(const std::map<std::string, std::string>&);
    struct Subcommand {
      Command run;
      const char* required;  // the flag without which it is bad usage
      std::vector<std::string> flags;
    };
    const std::map<std::string, Subcommand> commands = {
        {"tokenize",
         {TokenizeCommand,
          "--model",
          {"--model", "--text", "--chat", "-o", "--chat-template", "--mask",
           "--add-special-tokens"}}},
        {"score",
         {ScoreCommand,
          "--model",
          {"--model", "--adapter", "--data", "-o", "--logits-out",
           "--chat-template", "--mask", "--device", "--dtype"}}},
        {"generate",
         {GenerateCommand,
          "--model",
          {"--model", "--adapter", "--prompt", "--chat", "--max-new-tokens",
           "--temperature", "--top-p", "--seed", "-o", "--chat-template",
           "--expert", "--expert-adapter", "--anti-expert", "--alpha"}}},
        {"analyze",
         {AnalyzeCommand,
          "--model",
          {"--model", "--adapter", "--data", "--validation", "--out", "--max-seq-len",
           "--select-loss-quantile", "--keep-duplicates", "--chat-template", "--device",
           "--dtype", "-o", "--batch-size", "--select", "--target", "--budget",
           "--epsilon-fraction", "--shard-size", "--score", "--threshold", "--drop-fraction", "--alpha",
           "--samples", "--temperature", "--max-new-tokens", "--answer-extractor",
           "--answer-pattern", "--seed"}}},
        {"s2ft-apply",
         {S2ftApplyCommand, "--model", {"--model", "--diff", "--out", "--revert"}}},
        {"merge",
         {MergeCommand,
          "--base",
          {"--base",
           "--inputs",
           "--out",
           "--method",
           "--weights",
           "--lambda",
           "--density",
           "--majority-sign",
           "--beta",
           "--gamma",
           "--lines-alpha",
           "--lines-beta",
           "--seed",
           "--lora-out",
           "--lora-rank",
           "--lora-target-modules",
           "--validation-file",
           "--chat-template",
           "--max-seq-len",
           "--device",
           "--dtype",
           "-o"}}},
    };
    auto it = commands.find(command);
    if (it != commands.end()) {
      auto flags = ParseFlags(argc, argv, it->second.flags);
      if (flags.has_value() && flags->count(it->second.required)) {
        const absl::Status status = it->second.run(*flags);
        return status.ok() ? 0 : Fail(status);
      }
    }
    std::fprintf(stderr, kUsage, argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace lathe::engine
