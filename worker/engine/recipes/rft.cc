#include "worker/engine/recipes/rft.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/rft.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/inference/generate.h"
#include "worker/engine/recipes/loop.h"
#include "worker/engine/recipes/preference.h"
#include "worker/engine/recipes/sft.h"
#include "worker/engine/reports/reports.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

using Json = nlohmann::json;
namespace fs = std::filesystem;

uint64_t RftSampleSeed(uint64_t seed, int iteration, int64_t line,
                       int sample) {
  auto mix = [](uint64_t x) {  // SplitMix64's finalizer
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(seed);
  h = mix(h ^ static_cast<uint64_t>(iteration));
  h = mix(h ^ static_cast<uint64_t>(line));
  return mix(h ^ static_cast<uint64_t>(sample));
}

namespace {

// A training line as the sampler sees it.
struct RftLine {
  DataRecord record;
  std::vector<int32_t> prompt_ids;
  std::string gold_answer;  // of the gold reply (RFT)
};

const std::string& GoldReply(const DataRecord& r) {
  return r.format == DataFormat::kChat ? r.messages.back().content
                                       : r.completion;
}

// The line of `record` with `reply` as its answer, in its format.
std::string RftLineJson(const DataRecord& record, const std::string& reply) {
  if (record.format == DataFormat::kPromptCompletion) {
    return Json{{"prompt", record.prompt}, {"completion", reply}}.dump() +
           "\n";
  }
  Json messages = Json::array();
  for (size_t i = 0; i + 1 < record.messages.size(); ++i) {
    const ChatMessage& m = record.messages[i];
    Json message = {{"role", m.role}, {"content", m.content}};
    if (m.role == "assistant" && !m.train) message["weight"] = 0;
    messages.push_back(std::move(message));
  }
  messages.push_back({{"role", "assistant"}, {"content", reply}});
  return Json{{"messages", std::move(messages)}}.dump() + "\n";
}

absl::Status DataError(const std::string& file, int line,
                       const std::string& what) {
  return WithErrorKind(absl::InvalidArgumentError(
                           absl::StrCat(file, ": line ", line, ": ", what)),
                       ErrorKind::kUserData, "training_file");
}

// SPIN's training line: the gold reply chosen, the generation rejected.
std::string SpinPairJson(const DataRecord& record,
                         const std::string& generated) {
  Json messages = Json::array();
  for (size_t i = 0; i + 1 < record.messages.size(); ++i) {
    const ChatMessage& m = record.messages[i];
    messages.push_back({{"role", m.role}, {"content", m.content}});
  }
  return Json{{"input", {{"messages", std::move(messages)}}},
              {"preferred_output",
               {{{"role", "assistant"}, {"content", GoldReply(record)}}}},
              {"non_preferred_output",
               {{{"role", "assistant"}, {"content", generated}}}}}
             .dump() +
         "\n";
}

// `spin`: no answers are read, and only chat lines are taken.
absl::StatusOr<std::vector<RftLine>> LoadRftLines(
    const RunSpec& spec, const ModelSetup& setup,
    const AnswerExtractor& extractor, bool spin) {
  const DataSpec& d = spec.data;
  const std::string file =
      d.training_file_name.empty() ? d.training_file : d.training_file_name;
  ASSIGN_OR_RETURN(std::vector<DataRecord> records,
                   WithErrorKind(ReadDataJsonl(d.training_file,
                                               d.training_file_name),
                                 ErrorKind::kUserData, "training_file"));
  std::vector<RftLine> lines;
  for (DataRecord& record : records) {
    std::string prompt;
    if (record.format == DataFormat::kChat) {
      if (!setup.chat_template.ok()) {
        return DataError(file, record.line,
                         absl::StrCat("chat data needs the model's chat "
                                      "template: ",
                                      setup.chat_template.status().message()));
      }
      if (record.messages.back().role != "assistant") {
        return DataError(file, record.line,
                         "the last message must be the assistant's gold reply "
                         "(self_training samples replies to the messages "
                         "before it)");
      }
      prompt = setup.chat_template->RenderPrompt(std::vector<ChatMessage>(
          record.messages.begin(), record.messages.end() - 1));
    } else if (record.format == DataFormat::kPromptCompletion && !spin) {
      prompt = record.prompt;
    } else if (record.format == DataFormat::kPromptCompletion) {
      return DataError(file, record.line,
                       "SPIN trains on chat lines (its pairs are chat "
                       "preference lines); give this one as messages");
    } else {
      return DataError(file, record.line,
                       "a text line has no prompt to sample replies to; "
                       "self_training takes chat or prompt/completion lines");
    }
    std::optional<std::string> answer =
        spin ? std::optional<std::string>("")
             : ExtractAnswer(extractor, GoldReply(record));
    if (!answer.has_value()) {
      return DataError(
          file, record.line,
          absl::StrCat("the gold reply has no answer that answer_extractor \"",
                       extractor.kind, "\" finds",
                       extractor.kind == "gsm8k"
                           ? " (GSM8K's \"#### <number>\")"
                           : ""));
    }
    ASSIGN_OR_RETURN(Encoding encoding, setup.tokenizer->Encode(prompt));
    if (encoding.ids.empty()) {
      return DataError(file, record.line, "the prompt has no tokens");
    }
    lines.push_back({.record = std::move(record),
                     .prompt_ids = std::move(encoding.ids),
                     .gold_answer = *std::move(answer)});
  }
  if (lines.empty()) {
    return DataError(file, 1, "the file has no lines to sample from");
  }
  return lines;
}

Json ReportJson(const IterationReport& r) {
  Json j = {{"iteration", r.iteration},
            {"iterations", r.iterations},
            {"prompts", r.prompts},
            {"samples", r.samples},
            {"correct", r.correct},
            {"kept", r.kept},
            {"rft_examples", r.rft_examples},
            {"seconds_sampling", r.seconds_sampling},
            {"trained", r.trained},
            {"first_step", r.first_step},
            {"last_step", r.last_step},
            {"first_loss", r.first_loss},
            {"last_loss", r.last_loss},
            {"trained_tokens", r.trained_tokens}};
  if (r.validation_loss) j["validation_loss"] = *r.validation_loss;
  return j;
}

absl::StatusOr<IterationReport> ReportFromJson(const Json& j) {
  try {
    IterationReport r;
    r.iteration = j.at("iteration").get<int>();
    r.iterations = j.at("iterations").get<int>();
    r.prompts = j.at("prompts").get<int64_t>();
    r.samples = j.at("samples").get<int64_t>();
    r.correct = j.at("correct").get<int64_t>();
    r.kept = j.at("kept").get<int64_t>();
    r.rft_examples = j.at("rft_examples").get<int64_t>();
    r.seconds_sampling = j.at("seconds_sampling").get<double>();
    r.trained = j.at("trained").get<bool>();
    r.first_step = j.at("first_step").get<int64_t>();
    r.last_step = j.at("last_step").get<int64_t>();
    r.first_loss = j.at("first_loss").get<double>();
    r.last_loss = j.at("last_loss").get<double>();
    r.trained_tokens = j.at("trained_tokens").get<int64_t>();
    if (j.contains("validation_loss")) {
      r.validation_loss = j["validation_loss"].get<double>();
    }
    return r;
  } catch (const Json::exception& e) {
    return absl::DataLossError(
        absl::StrCat(kSelfTrainingStateFile, ": an iteration report: ", e.what()));
  }
}

// Where a run's own files go: each iteration's RFT set before its first
// checkpoint holds it. Removed with the run.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (fs::temp_directory_path() / "lathe_rft.XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The SFT objective of one iteration; its checkpoints also hold the
// iteration's RFT set and where the run stands.
class IterationObjective : public Objective {
 public:
  IterationObjective(std::unique_ptr<Objective> inner, std::string data_file,
                     std::string new_file, Json state)
      : inner_(std::move(inner)),
        data_file_(std::move(data_file)),
        new_file_(std::move(new_file)),
        state_(std::move(state)) {}

  size_t train_examples() const override { return inner_->train_examples(); }
  const MixturePlan* mixture() const override { return inner_->mixture(); }
  int64_t truncated_examples() const override {
    return inner_->truncated_examples();
  }
  absl::StatusOr<StepWork> Step(
      const std::vector<std::vector<size_t>>& micro_batches,
      int64_t step) override {
    return inner_->Step(micro_batches, step);
  }
  bool has_validation() const override { return inner_->has_validation(); }
  EvalWork Evaluate() override { return inner_->Evaluate(); }
  absl::Status Prepare() override { return inner_->Prepare(); }
  absl::Status SaveState(const std::string& dir) const override {
    RETURN_IF_ERROR(inner_->SaveState(dir));
    for (const auto& [from, name] :
         {std::pair<std::string, const char*>{data_file_, kIterationTrainFile},
          {new_file_, kIterationNewFile}}) {
      if (from.empty()) continue;
      const std::string copy = absl::StrCat(dir, "/", name);
      std::error_code ec;
      fs::copy_file(from, copy, fs::copy_options::overwrite_existing, ec);
      if (ec) {
        return absl::InternalError(absl::StrCat("copying ", from, " into ",
                                                dir, ": ", ec.message()));
      }
    }
    return WriteJsonFile(absl::StrCat(dir, "/", kSelfTrainingStateFile), state_);
  }
  absl::Status LoadState(const std::string& dir) override {
    return inner_->LoadState(dir);
  }
  std::string Describe() const override {
    return absl::StrCat(inner_->Describe(), ", ",
                        state_["iterations"].back()["rft_examples"].get<int64_t>(),
                        " examples of the iteration");
  }

 private:
  std::unique_ptr<Objective> inner_;
  const std::string data_file_;
  const std::string new_file_;  // SPIN: the iteration's own pairs
  const Json state_;
};

RftDedupe DedupeOf(const std::string& name) {
  return name == "exact" ? RftDedupe::kExact
         : name == "none" ? RftDedupe::kNone
                          : RftDedupe::kEquations;
}

}  // namespace

absl::StatusOr<TrainResult> RunSelfTraining(const RunSpec& spec,
                                            const TrainHooks& hooks) {
  const SelfTrainingSpec& st = spec.self_training;
  const bool spin = std::holds_alternative<DpoSpec>(spec.objective);
  const AnswerExtractor extractor{.kind = st.answer_extractor,
                                  .pattern = st.answer_pattern};
  ASSIGN_OR_RETURN(ModelSetup setup, SetUpModel(spec));
  ASSIGN_OR_RETURN(const std::vector<RftLine> lines,
                   LoadRftLines(spec, setup, extractor, spin));
  LlamaModel& model = *setup.model;
  const std::vector<AdamW::Param> params =
      TrainableParams(model, spec.adapter);
  // init "base": what each iteration trains from.
  std::vector<torch::Tensor> initial;
  if (st.init == "base") {
    torch::NoGradGuard no_grad;
    for (const AdamW::Param& p : params) {
      initial.push_back(p.value.detach().clone());
    }
  }
  GenerateOptions generate{.max_new_tokens = st.max_new_tokens,
                           .temperature = st.temperature,
                           .top_p = st.top_p};
  generate.stop_ids = ReplyStopIds(
      *setup.tokenizer,
      setup.chat_template.ok() ? &*setup.chat_template : nullptr);

  // Where the run stands: fresh, or a checkpoint's iteration.
  int first_iteration = 1;
  int64_t offset = 0;  // steps of the iterations before
  std::vector<IterationReport> history;
  // The forgetting report (evaluation.general_file): the base model's loss
  // before the first iteration, carried by every checkpoint's state, and
  // the trained model's after the last.
  ASSIGN_OR_RETURN(const std::optional<GeneralSet> general,
                   LoadGeneralSet(spec, setup));
  std::optional<HeldOutLoss> general_before;
  const std::string& resume_from = spec.checkpoint.resume_from;
  if (!resume_from.empty()) {
    const std::string path = absl::StrCat(resume_from, "/", kSelfTrainingStateFile);
    ASSIGN_OR_RETURN(const Json state, ReadJsonFile(path));
    if (!state.is_object() || !state.contains("iteration") ||
        !state["iteration"].is_number_integer() ||
        !state.contains("step_offset") ||
        !state["step_offset"].is_number_integer() ||
        !state.contains("iterations") || !state["iterations"].is_array() ||
        state["iterations"].empty()) {
      return absl::DataLossError(absl::StrCat(
          path, " is not a self-training state (iteration, step_offset, "
                "iterations)"));
    }
    first_iteration = state["iteration"].get<int>();
    offset = state["step_offset"].get<int64_t>();
    for (const Json& j : state["iterations"]) {
      ASSIGN_OR_RETURN(IterationReport r, ReportFromJson(j));
      history.push_back(r);
    }
    if (const auto b = state.find("general_before"); general && b != state.end() &&
        b->is_object() && b->value("loss", Json()).is_number() &&
        b->value("tokens", Json()).is_number_integer()) {
      general_before = HeldOutLoss{.loss = (*b)["loss"].get<double>(),
                                   .tokens = (*b)["tokens"].get<int64_t>()};
    } else if (general) {
      spdlog::warn("{} holds no general_before: no forgetting report for this run", path);
    }
    if (first_iteration < 1 || first_iteration > st.iterations ||
        history.back().iteration != first_iteration) {
      return WithErrorKind(
          absl::FailedPreconditionError(absl::StrCat(
              resume_from, " is of iteration ", first_iteration,
              " of a run with other iterations; resume it with the "
              "self_training settings it was written with")),
          ErrorKind::kUserOptions, "self_training.iterations");
    }
  }

  if (general && resume_from.empty()) {
    general_before = GeneralLossBefore(model, *general, spec);
  }

  ScratchDir scratch;
  if (scratch.path().empty()) {
    return absl::InternalError("cannot make a scratch folder for the RFT sets");
  }
  bool stop_requested = false;  // a pause during sampling: see below
  // SPIN with accumulate_previous: the previous iteration's own pairs.
  std::string previous_new;
  TrainResult result;
  for (int i = first_iteration; i <= st.iterations; ++i) {
    const bool resuming = !resume_from.empty() && i == first_iteration;
    IterationReport report;
    std::string data_file, new_file;
    if (resuming) {
      report = history.back();
      history.pop_back();
      data_file = absl::StrCat(resume_from, "/", kIterationTrainFile);
      if (spin) new_file = absl::StrCat(resume_from, "/", kIterationNewFile);
    } else {
      // 1. Sample with the current model.
      report.iteration = i;
      report.iterations = st.iterations;
      report.prompts = static_cast<int64_t>(lines.size());
      const auto start = std::chrono::steady_clock::now();
      data_file = absl::StrCat(scratch.path(), "/iteration-", i, ".jsonl");
      if (spin) {
        new_file = absl::StrCat(scratch.path(), "/iteration-", i, ".new.jsonl");
      }
      std::ofstream out(spin ? new_file : data_file,
                        std::ios::binary | std::ios::trunc);
      for (size_t j = 0; j < lines.size(); ++j) {
        if (hooks.should_stop) {
          const StopRequest stop = hooks.should_stop();
          if (stop == StopRequest::kCancel) {
            return absl::CancelledError(absl::StrCat(
                "cancelled while sampling iteration ", i, " (step ", offset,
                ")"));
          }
          // A pause after the first iteration stops at once: the previous
          // iteration's last checkpoint is the resume point, and sampling
          // again from it draws the same set. In the first, it waits for
          // the sampling to end: the loop's first step then checkpoints
          // the RFT set (step 0) and stops.
          if (stop == StopRequest::kCheckpointAndStop && i > 1) {
            return absl::AbortedError(absl::StrCat(
                "stopped at step ", offset, " after checkpointing (iteration ",
                i - 1, "'s end; iteration ", i, " samples again on resume)"));
          }
          if (stop == StopRequest::kCheckpointAndStop && !stop_requested) {
            stop_requested = true;
            spdlog::info("stop requested: finishing iteration {}'s sampling "
                         "to checkpoint it",
                         i);
          }
        }
        const RftLine& line = lines[j];
        // Sample s of this line, decoded without its stop token.
        auto sample = [&](int s) -> absl::StatusOr<std::string> {
          generate.seed =
              RftSampleSeed(spec.seed, i, static_cast<int64_t>(j), s);
          ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                           Generate(model, line.prompt_ids, generate));
          if (!ids.empty() &&
              std::find(generate.stop_ids.begin(), generate.stop_ids.end(),
                        ids.back()) != generate.stop_ids.end()) {
            ids.pop_back();
          }
          return setup.tokenizer->Decode(ids);
        };
        if (spin) {
          // One generation, left-stripped (SPIN's generate.py).
          ASSIGN_OR_RETURN(std::string text, sample(0));
          text = std::string(absl::StripLeadingAsciiWhitespace(text));
          ++report.samples;
          if (text == GoldReply(line.record)) ++report.correct;
          // An empty reply is no preference line: that prompt sits out.
          if (!absl::StripAsciiWhitespace(text).empty()) {
            out << SpinPairJson(line.record, text);
            ++report.kept;
          }
          continue;
        }
        std::vector<std::string> samples;
        for (int s = 0; s < st.samples_per_prompt; ++s) {
          ASSIGN_OR_RETURN(std::string text, sample(s));
          samples.push_back(std::move(text));
        }
        report.samples += st.samples_per_prompt;
        for (const std::string& text : samples) {
          std::optional<std::string> answer = ExtractAnswer(extractor, text);
          if (answer && SameAnswer(extractor, *answer, line.gold_answer)) {
            ++report.correct;
          }
        }
        // Empty replies are not training examples (the data check refuses
        // an empty assistant message).
        std::vector<std::string> nonempty;
        for (std::string& text : samples) {
          if (!absl::StripAsciiWhitespace(text).empty()) {
            nonempty.push_back(std::move(text));
          }
        }
        const std::vector<std::string> kept = SelectRftPaths(
            extractor, line.gold_answer, nonempty, DedupeOf(st.dedupe));
        report.kept += static_cast<int64_t>(kept.size());
        if (st.include_gold) out << RftLineJson(line.record, GoldReply(line.record));
        for (const std::string& path : kept) out << RftLineJson(line.record, path);
        report.rft_examples +=
            static_cast<int64_t>(kept.size()) + (st.include_gold ? 1 : 0);
      }
      out.close();
      if (!out) {
        return absl::InternalError(absl::StrCat("writing ", data_file));
      }
      if (spin) {
        // The training set: this iteration's pairs, then the previous
        // iteration's.
        report.rft_examples = report.kept;
        std::ofstream train(data_file, std::ios::binary | std::ios::trunc);
        for (const std::string& from : {new_file, previous_new}) {
          if (from.empty() || (from == previous_new && !st.accumulate_previous)) {
            continue;
          }
          std::ifstream in(from, std::ios::binary);
          for (std::string pair; std::getline(in, pair);) {
            if (pair.empty()) continue;
            train << pair << "\n";
            if (from == previous_new) ++report.rft_examples;
          }
        }
        train.close();
        if (!train) {
          return absl::InternalError(absl::StrCat("writing ", data_file));
        }
      }
      report.seconds_sampling = std::chrono::duration<double>(
                                    std::chrono::steady_clock::now() - start)
                                    .count();
      if (spin) {
        spdlog::info(
            "iteration {}/{}: {} replies generated ({} the gold reply, {} "
            "empty); {} pairs to train on ({:.1f} s generating)",
            i, st.iterations, report.samples, report.correct,
            report.samples - report.kept, report.rft_examples,
            report.seconds_sampling);
      } else {
        spdlog::info(
            "iteration {}/{}: {} of {} samples correct ({:.1f}%), {} kept; "
            "RFT set of {} examples ({:.1f} s sampling)",
            i, st.iterations, report.correct, report.samples,
            100 * report.accepted_fraction(), report.kept, report.rft_examples,
            report.seconds_sampling);
      }
      if (spin && report.rft_examples == 0) {
        return WithErrorKind(
            absl::FailedPreconditionError(absl::StrCat(
                "iteration ", i, " generated only empty replies, so it has "
                "no pairs to train on; allow more tokens (max_new_tokens) or "
                "sample (temperature)")),
            ErrorKind::kUserOptions, "self_training.max_new_tokens");
      }
      if (report.rft_examples == 0) {
        return WithErrorKind(
            absl::FailedPreconditionError(absl::StrCat(
                "iteration ", i, " kept none of its ", report.samples,
                " samples and include_gold is off, so it has nothing to "
                "train on; turn include_gold on, or sample more "
                "(samples_per_prompt, temperature)")),
            ErrorKind::kUserOptions, "self_training.include_gold");
      }
      if (hooks.on_iteration) hooks.on_iteration(report);
      // 3. What the iteration trains from.
      if (st.init == "base" && i > 1) {
        torch::NoGradGuard no_grad;
        for (size_t p = 0; p < params.size(); ++p) {
          params[p].value.copy_(initial[p]);
        }
      }
      ReseedGenerator(model, spec.seed);
    }

    // 2-3. Train on the RFT set.
    RunSpec it = spec;
    it.data.training_file = data_file;
    it.data.training_file_name =
        absl::StrCat("iteration ", i, spin ? "'s pairs" : "'s RFT set");
    it.checkpoint.dir =
        spec.checkpoint.dir.empty()
            ? ""
            : absl::StrCat(spec.checkpoint.dir, "/iteration-", i);
    it.checkpoint.resume_from = resuming ? resume_from : "";
    it.checkpoint.at_end = true;
    if (i < st.iterations) it.evaluation.intruder_top_k = 0;
    Json state = {{"iteration", i}, {"step_offset", offset},
                  {"iterations", Json::array()}};
    for (const IterationReport& r : history) {
      state["iterations"].push_back(ReportJson(r));
    }
    state["iterations"].push_back(ReportJson(report));
    if (general_before) {
      state["general_before"] = {{"loss", general_before->loss},
                                 {"tokens", general_before->tokens}};
    }
    std::unique_ptr<Objective> inner_objective;
    if (spin) {
      // The opponent: the model this iteration starts from.
      DpoSpec& dpo = std::get<DpoSpec>(it.objective);
      dpo.reference = "precomputed";
      ASSIGN_OR_RETURN(inner_objective, MakeDpoObjective(it, dpo, setup));
    } else {
      ASSIGN_OR_RETURN(inner_objective,
                       MakeSftObjective(it, std::get<SftSpec>(it.objective),
                                        setup));
    }
    IterationObjective objective(std::move(inner_objective), data_file,
                                 new_file, state);
    TrainHooks inner;
    inner.on_step = [&](const StepMetrics& m) {
      if (!hooks.on_step) return;
      StepMetrics shifted = m;
      shifted.step += offset;
      shifted.total_steps += offset;
      shifted.iteration = i;
      hooks.on_step(shifted);
    };
    inner.should_stop = [&] {
      if (stop_requested) return StopRequest::kCheckpointAndStop;
      return hooks.should_stop ? hooks.should_stop() : StopRequest::kNone;
    };
    inner.on_checkpoint = [&](const CheckpointInfo& c) {
      if (!hooks.on_checkpoint) return;
      CheckpointInfo shifted = c;
      shifted.step += offset;
      shifted.metrics.step += offset;
      shifted.metrics.total_steps += offset;
      shifted.metrics.iteration = i;
      hooks.on_checkpoint(shifted);
    };
    absl::StatusOr<TrainResult> trained =
        RunLoop(it, model, objective, inner);
    if (absl::IsAborted(trained.status()) ||
        absl::IsCancelled(trained.status())) {
      // "stopped at step N": the job's step, not the iteration's.
      return absl::Status(
          trained.status().code(),
          absl::StrCat(trained.status().message(), " of iteration ", i,
                       " (step ", offset, " before it)"));
    }
    RETURN_IF_ERROR(trained.status());
    report.trained = true;
    report.first_step = offset;
    report.last_step = offset + trained->steps;
    report.first_loss = trained->first_loss;
    report.last_loss = trained->last_loss;
    report.validation_loss = trained->validation_loss;
    report.trained_tokens = trained->trained_tokens;
    offset = report.last_step;
    previous_new = new_file;
    history.push_back(report);
    if (hooks.on_iteration) hooks.on_iteration(report);
    result.truncated_examples += trained->truncated_examples;
    result.padding_tokens += trained->padding_tokens;
    result.loss_peak_bytes =
        std::max(result.loss_peak_bytes, trained->loss_peak_bytes);
    result.last_loss = trained->last_loss;
    result.validation_loss = trained->validation_loss;
    result.intruders = std::move(trained->intruders);
  }
  if (general_before) {
    result.forgetting = ForgettingAfter(model, *general, spec, *general_before);
  }
  result.steps = offset;
  result.first_loss = history.front().first_loss;
  for (const IterationReport& r : history) {
    result.trained_tokens += r.trained_tokens;
  }
  result.iterations = std::move(history);
  return result;
}

}  // namespace lathe::engine
