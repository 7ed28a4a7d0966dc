// Rejection-sampling fine-tuning in iterations (recipes/rft.h, METHODS.md
// §7.2): the RFT set against a replay of the seeded sampler with a
// selection written here, step numbering across iterations, resuming, and
// the errors.
#include "worker/engine/recipes/rft.h"

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/inference/generate.h"
#include "worker/engine/inference/score.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// The value of the last number in `text`, read here by hand as
// last_number is documented (data/rft.h): an optional '-', digits with
// commas inside, an optional fraction.
std::optional<double> LastNumber(const std::string& text) {
  auto digit = [&](size_t i) {
    return i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]));
  };
  std::optional<double> last;
  for (size_t i = 0; i < text.size();) {
    const bool negative = text[i] == '-' && digit(i + 1);
    if (!negative && !digit(i)) {
      ++i;
      continue;
    }
    size_t j = i + (negative ? 1 : 0);
    std::string number = negative ? "-" : "";
    while (digit(j) || (j < text.size() && text[j] == ',')) {
      if (text[j] != ',') number += text[j];
      ++j;
    }
    if (j < text.size() && text[j] == '.' && digit(j + 1)) {
      number += '.';
      for (++j; digit(j); ++j) number += text[j];
    }
    last = std::stod(number);
    i = j;
  }
  return last;
}

std::vector<Json> JsonLines(const std::string& path) {
  std::vector<Json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(Json::parse(line));
  }
  return out;
}

Json ChatLine(const std::string& question, const std::string& reply) {
  return {{"messages",
           {{{"role", "user"}, {"content", question}},
            {{"role", "assistant"}, {"content", reply}}}}};
}

void WriteLines(const std::string& path, const std::vector<Json>& lines) {
  std::ofstream out(path);
  for (const Json& j : lines) out << j.dump() << "\n";
}

class RftTest : public ::testing::Test {
 protected:
  // The demo, and a sampler that has learned its sums: the demo's LoRA run
  // merged into a model folder.
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
    RunSpec spec = DemoSpec(demo_->path() + "/sft-adapter");
    spec.output.merged_dir = SamplerDir();
    absl::StatusOr<TrainResult> r = Train(spec, {});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  static void TearDownTestSuite() { delete demo_; }

  static std::string SamplerDir() { return demo_->path() + "/sampler"; }

  static RunSpec DemoSpec(const std::string& out) {
    absl::StatusOr<Json> json = ReadJsonFile(demo_->path() + "/spec.json");
    EXPECT_TRUE(json.ok()) << json.status();
    absl::StatusOr<RunSpec> spec = ParseRunSpec(*json, demo_->path());
    EXPECT_TRUE(spec.ok()) << spec.status();
    spec->output.dir = out;
    return *spec;
  }

  // An RFT run on the sampler over `training_file`.
  static RunSpec RftSpec(const std::string& dir,
                         const std::string& training_file, int iterations) {
    RunSpec spec = DemoSpec(dir + "/adapter");
    spec.model.dir = SamplerDir();
    spec.data.training_file = training_file;
    spec.data.validation_file.clear();
    spec.schedule.n_epochs = 1;
    spec.data.batch_size = 2;
    spec.checkpoint.dir = dir + "/ckpt";
    spec.evaluation.intruder_top_k = 0;
    spec.self_training = {.iterations = iterations,
                          .samples_per_prompt = 4,
                          .temperature = 1.0,
                          .max_new_tokens = 12,
                          .answer_extractor = "last_number",
                          .dedupe = "none"};
    return spec;
  }

  // A run's steps, checkpoints, iteration reports and outcome; it asks for
  // kCheckpointAndStop once step `stop_after` (> 0) has run.
  struct Out {
    std::vector<StepMetrics> steps;
    std::vector<CheckpointInfo> checkpoints;
    std::vector<IterationReport> reports;
    absl::StatusOr<TrainResult> result;
  };
  static Out TrainRun(const RunSpec& spec, int64_t stop_after) {
    Out out;
    int64_t done = 0;
    out.result = Train(
        spec, {.on_step =
                   [&](const StepMetrics& m) {
                     out.steps.push_back(m);
                     done = m.step;
                   },
               .should_stop =
                   [&] {
                     return stop_after > 0 && done >= stop_after
                                ? StopRequest::kCheckpointAndStop
                                : StopRequest::kNone;
                   },
               .on_checkpoint =
                   [&](const CheckpointInfo& c) { out.checkpoints.push_back(c); },
               .on_iteration =
                   [&](const IterationReport& r) { out.reports.push_back(r); }});
    return out;
  }

  static const std::vector<std::pair<int, int>>& Sums() {
    static const auto* sums =
        new std::vector<std::pair<int, int>>{{2, 3}, {4, 4}, {1, 7}, {6, 2}};
    return *sums;
  }
  static std::string Question(int j) {
    return absl::StrCat("What is ", Sums()[j].first, " plus ",
                        Sums()[j].second, "?");
  }
  static std::string TrainingFile(const std::string& dir) {
    std::vector<Json> lines;
    for (size_t j = 0; j < Sums().size(); ++j) {
      const auto [a, b] = Sums()[j];
      lines.push_back(ChatLine(Question(j), absl::StrCat(a, " plus ", b,
                                                         " is ", a + b, ".")));
    }
    WriteLines(dir + "/train.jsonl", lines);
    return dir + "/train.jsonl";
  }

  static testing::TempDir* demo_;
};
testing::TempDir* RftTest::demo_ = nullptr;

// Done-when: the RFT set of iteration 1 is, per line, the gold reply and
// then exactly those of the seeded samples whose last number is the gold
// one's, the samples replayed here with Generate from the sampler and
// RftSampleSeed, the numbers read by LastNumber above.
TEST_F(RftTest, TheFirstSetIsTheGoldPlusTheReplayedSamplesWhoseNumberMatches) {
  testing::TempDir dir;
  const int k = 4;
  // The replay.
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Load(SamplerDir());
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(SamplerDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<ChatTemplate> chat = ChatTemplateFor(**tokenizer, "");
  ASSERT_TRUE(chat.ok()) << chat.status();
  const uint64_t seed = RftSpec(dir.path(), "", 1).seed;
  std::vector<std::vector<std::string>> samples(Sums().size());
  for (size_t j = 0; j < Sums().size(); ++j) {
    const std::string prompt =
        chat->RenderPrompt({{.role = "user", .content = Question(j)}});
    absl::StatusOr<Encoding> encoding = (*tokenizer)->Encode(prompt);
    ASSERT_TRUE(encoding.ok());
    for (int s = 0; s < k; ++s) {
      GenerateOptions options{.max_new_tokens = 12,
                              .temperature = 1.0,
                              .seed = RftSampleSeed(seed, 1, j, s),
                              .stop_ids = {(*tokenizer)->eos_id()}};
      absl::StatusOr<std::vector<int32_t>> ids =
          Generate(**model, encoding->ids, options);
      ASSERT_TRUE(ids.ok()) << ids.status();
      if (!ids->empty() && ids->back() == (*tokenizer)->eos_id()) ids->pop_back();
      absl::StatusOr<std::string> text = (*tokenizer)->Decode(*ids);
      ASSERT_TRUE(text.ok());
      samples[j].push_back(*text);
    }
  }
  // The gold replies: lines 0 and 2 take sample 0's number when it has one
  // (so that some samples match), lines 1 and 3 the true sum.
  std::vector<Json> lines, expected;
  int64_t correct = 0, rejected = 0;
  for (size_t j = 0; j < Sums().size(); ++j) {
    const auto [a, b] = Sums()[j];
    double gold = a + b;
    if (j % 2 == 0 && LastNumber(samples[j][0])) gold = *LastNumber(samples[j][0]);
    const std::string reply = absl::StrCat(a, " plus ", b, " is ", gold, ".");
    lines.push_back(ChatLine(Question(j), reply));
    expected.push_back(ChatLine(Question(j), reply));
    for (const std::string& s : samples[j]) {
      if (LastNumber(s) == gold) {
        ++correct;
        expected.push_back(ChatLine(Question(j), s));
      } else {
        ++rejected;
      }
    }
  }
  ASSERT_GT(correct, 0) << "the sampler never wrote the gold number";
  ASSERT_GT(rejected, 0);
  WriteLines(dir.path() + "/train.jsonl", lines);

  RunSpec spec = RftSpec(dir.path(), dir.path() + "/train.jsonl", 1);
  std::vector<IterationReport> reports;
  std::vector<CheckpointInfo> checkpoints;
  absl::StatusOr<TrainResult> r = Train(
      spec, {.on_checkpoint = [&](const CheckpointInfo& c) {
               checkpoints.push_back(c);
             },
             .on_iteration = [&](const IterationReport& report) {
               reports.push_back(report);
             }});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(reports.size(), 2u);  // selected, then trained
  EXPECT_FALSE(reports[0].trained);
  EXPECT_EQ(reports[0].samples, 4 * k);
  EXPECT_EQ(reports[0].correct, correct);
  EXPECT_EQ(reports[0].kept, correct);
  EXPECT_EQ(reports[0].rft_examples, static_cast<int64_t>(expected.size()));
  EXPECT_DOUBLE_EQ(reports[0].accepted_fraction(),
                   static_cast<double>(correct) / (4 * k));
  EXPECT_TRUE(reports[1].trained);
  // ceil(|set| / batch 2) steps of one epoch.
  EXPECT_EQ(r->steps, (static_cast<int64_t>(expected.size()) + 1) / 2);
  ASSERT_EQ(r->iterations.size(), 1u);
  // The iteration's model is a checkpoint, holding its RFT set.
  ASSERT_FALSE(checkpoints.empty());
  EXPECT_EQ(checkpoints.back().step, r->steps);
  EXPECT_EQ(JsonLines(checkpoints.back().dir + "/" + kIterationTrainFile), expected);
  EXPECT_TRUE(fs::exists(dir.path() + "/adapter/adapter_model.safetensors"));
}

// Steps count across iterations; a run stopped in iteration 2, or resumed
// from iteration 1's last checkpoint (sampling iteration 2 again), ends
// with the uninterrupted run's adapter.
TEST_F(RftTest, TwoIterationsCountStepsOnAndResumeToTheSameAdapter) {
  testing::TempDir data, whole, stopped, boundary;
  const std::string train = TrainingFile(data.path());
  // TrainRun, appending what it saw.
  auto run = [&](const RunSpec& spec, int64_t stop_after,
                 std::vector<StepMetrics>* steps,
                 std::vector<CheckpointInfo>* checkpoints,
                 std::vector<IterationReport>* reports) {
    Out out = TrainRun(spec, stop_after);
    steps->insert(steps->end(), out.steps.begin(), out.steps.end());
    checkpoints->insert(checkpoints->end(), out.checkpoints.begin(),
                        out.checkpoints.end());
    if (reports) {
      reports->insert(reports->end(), out.reports.begin(), out.reports.end());
    }
    return out.result;
  };
  std::vector<StepMetrics> steps;
  std::vector<CheckpointInfo> checkpoints;
  std::vector<IterationReport> reports;
  RunSpec spec = RftSpec(whole.path(), train, 2);
  absl::StatusOr<TrainResult> r =
      run(spec, 0, &steps, &checkpoints, &reports);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->iterations.size(), 2u);
  const IterationReport& one = r->iterations[0];
  const IterationReport& two = r->iterations[1];
  EXPECT_EQ(one.first_step, 0);
  EXPECT_EQ(two.first_step, one.last_step);
  EXPECT_EQ(r->steps, two.last_step);
  ASSERT_EQ(static_cast<int64_t>(steps.size()), r->steps);
  for (size_t s = 0; s < steps.size(); ++s) {
    EXPECT_EQ(steps[s].step, static_cast<int64_t>(s) + 1);
    EXPECT_EQ(steps[s].iteration,
              steps[s].step <= one.last_step ? 1 : 2);
  }
  // One checkpoint per iteration, at its last step.
  ASSERT_EQ(checkpoints.size(), 2u);
  EXPECT_EQ(checkpoints[0].step, one.last_step);
  EXPECT_EQ(checkpoints[1].step, two.last_step);
  EXPECT_EQ(reports.size(), 4u);

  // Stopped after iteration 2's first step, then resumed.
  ASSERT_GT(two.last_step - two.first_step, 1);
  std::vector<StepMetrics> steps2;
  std::vector<CheckpointInfo> checkpoints2;
  RunSpec stop_spec = RftSpec(stopped.path(), train, 2);
  absl::StatusOr<TrainResult> s =
      run(stop_spec, one.last_step + 1, &steps2, &checkpoints2, nullptr);
  ASSERT_TRUE(absl::IsAborted(s.status())) << s.status();
  ASSERT_EQ(checkpoints2.back().step, one.last_step + 1);
  stop_spec.checkpoint.resume_from = checkpoints2.back().dir;
  std::vector<StepMetrics> steps3;
  absl::StatusOr<TrainResult> resumed =
      run(stop_spec, 0, &steps3, &checkpoints2, nullptr);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_FALSE(steps3.empty());
  EXPECT_EQ(steps3.front().step, one.last_step + 2);
  EXPECT_EQ(resumed->steps, r->steps);
  ASSERT_EQ(resumed->iterations.size(), 2u);
  EXPECT_EQ(resumed->iterations[1].correct, two.correct);

  // From iteration 1's end: iteration 2 samples again, the same set.
  RunSpec boundary_spec = RftSpec(boundary.path(), train, 2);
  boundary_spec.checkpoint.resume_from = checkpoints[0].dir;
  std::vector<StepMetrics> steps4;
  std::vector<CheckpointInfo> checkpoints4;
  absl::StatusOr<TrainResult> again =
      run(boundary_spec, 0, &steps4, &checkpoints4, nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->iterations[1].rft_examples, two.rft_examples);

  const std::string adapter = "/adapter/adapter_model.safetensors";
  absl::StatusOr<TensorMap> a = LoadSafetensors(whole.path() + adapter);
  absl::StatusOr<TensorMap> b = LoadSafetensors(stopped.path() + adapter);
  absl::StatusOr<TensorMap> c = LoadSafetensors(boundary.path() + adapter);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (const auto& [name, tensor] : *a) {
    EXPECT_TRUE(torch::equal(tensor, b->at(name))) << name;
    EXPECT_TRUE(torch::equal(tensor, c->at(name))) << name;
  }
}

// init "base": iteration 2 samples with iteration 1's model but trains
// from the job's model, so its adapter is that of a plain SFT run from the
// job's model on iteration 2's set (the same seed, so the same LoRA init
// and data order).
TEST_F(RftTest, InitBaseTrainsEachIterationFromTheJobsModel) {
  testing::TempDir data, rft, plain;
  RunSpec spec = RftSpec(rft.path(), TrainingFile(data.path()), 2);
  spec.self_training.init = "base";
  Out out = TrainRun(spec, 0);
  ASSERT_TRUE(out.result.ok()) << out.result.status();
  ASSERT_EQ(out.checkpoints.size(), 2u);
  RunSpec sft = RftSpec(plain.path(),
                        out.checkpoints[1].dir + "/" + kIterationTrainFile, 1);
  sft.self_training = {};
  absl::StatusOr<TrainResult> r = Train(sft, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, out.result->iterations[1].last_step -
                          out.result->iterations[1].first_step);
  const std::string adapter = "/adapter/adapter_model.safetensors";
  absl::StatusOr<TensorMap> a = LoadSafetensors(rft.path() + adapter);
  absl::StatusOr<TensorMap> b = LoadSafetensors(plain.path() + adapter);
  ASSERT_TRUE(a.ok() && b.ok());
  for (const auto& [name, tensor] : *a) {
    EXPECT_TRUE(torch::allclose(tensor, b->at(name), 1e-6, 1e-7)) << name;
  }
  // With init "current" the second adapter differs (it goes on from the
  // first iteration's).
  testing::TempDir current;
  RunSpec on = RftSpec(current.path(), TrainingFile(data.path()), 2);
  ASSERT_TRUE(TrainRun(on, 0).result.ok());
  absl::StatusOr<TensorMap> c = LoadSafetensors(current.path() + adapter);
  ASSERT_TRUE(c.ok());
  bool differs = false;
  for (const auto& [name, tensor] : *a) differs |= !torch::allclose(tensor, c->at(name));
  EXPECT_TRUE(differs);
}

// The forgetting report of a self-training run (METHODS.md §9.1): "before"
// is the job's model scoring the general file (ScoreExample, weighted by
// each example's trained tokens), measured before iteration 1 and carried
// through a resume; "after" is the final adapter's on the same file.
TEST_F(RftTest, TheForgettingReportSpansTheIterations) {
  testing::TempDir data, whole, stopped;
  const std::string train = TrainingFile(data.path());
  RunSpec spec = RftSpec(whole.path(), train, 2);
  spec.evaluation.general_file = demo_->path() + "/valid.jsonl";

  // Σ loss_i n_i / Σ n_i of a model over the general file.
  auto general_loss = [&](const std::string& adapter_dir) {
    absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Load(SamplerDir());
    EXPECT_TRUE(model.ok());
    if (!adapter_dir.empty()) EXPECT_TRUE(LoadTrained(**model, adapter_dir).ok());
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(SamplerDir());
    absl::StatusOr<Dataset> general = LoadChatDataset(
        spec.evaluation.general_file, **tokenizer, ChatTemplateFor(**tokenizer, ""),
        spec.data.max_seq_len, "general");
    EXPECT_TRUE(general.ok()) << general.status();
    double sum = 0;
    int64_t tokens = 0;
    for (const Example& e : general->examples) {
      absl::StatusOr<Scores> scores = ScoreExample(**model, e);
      EXPECT_TRUE(scores.ok()) << scores.status();
      int64_t n = 0;
      for (size_t t = 1; t < e.loss_mask.size(); ++t) n += e.loss_mask[t];
      sum += scores->loss * n;
      tokens += n;
    }
    return sum / tokens;
  };

  Out out = TrainRun(spec, 0);
  ASSERT_TRUE(out.result.ok()) << out.result.status();
  ASSERT_TRUE(out.result->forgetting.has_value());
  const ForgettingReport& report = *out.result->forgetting;
  EXPECT_NEAR(report.loss_before, general_loss(""), 1e-5);
  EXPECT_NEAR(report.loss_after, general_loss(spec.output.dir), 1e-5);
  EXPECT_GT(std::abs(report.delta()), 1e-6);

  // Stopped in iteration 2 and resumed: the same "before", from the state.
  RunSpec stop_spec = RftSpec(stopped.path(), train, 2);
  stop_spec.evaluation.general_file = spec.evaluation.general_file;
  Out first = TrainRun(stop_spec, out.result->iterations[0].last_step + 1);
  ASSERT_TRUE(absl::IsAborted(first.result.status())) << first.result.status();
  stop_spec.checkpoint.resume_from = first.checkpoints.back().dir;
  Out rest = TrainRun(stop_spec, 0);
  ASSERT_TRUE(rest.result.ok()) << rest.result.status();
  ASSERT_TRUE(rest.result->forgetting.has_value());
  EXPECT_EQ(rest.result->forgetting->loss_before, report.loss_before);
  EXPECT_DOUBLE_EQ(rest.result->forgetting->loss_after, report.loss_after);
}

TEST_F(RftTest, BadDataAndSettingsAreRefusedNamingTheLineOrField) {
  testing::TempDir dir;
  // A gold reply without a number.
  WriteLines(dir.path() + "/no_answer.jsonl",
             {ChatLine("What is 2 plus 3?", "2 plus 3 is 5."),
              ChatLine("What is 1 plus 1?", "two")});
  RunSpec spec = RftSpec(dir.path(), dir.path() + "/no_answer.jsonl", 1);
  absl::StatusOr<TrainResult> r = Train(spec, {});
  ASSERT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("line 2"), std::string::npos)
      << r.status();
  EXPECT_EQ(ErrorKindOf(r.status()), ErrorKind::kUserData);

  // Text lines have no prompt.
  WriteLines(dir.path() + "/text.jsonl", {Json{{"text", "2 plus 3 is 5."}}});
  spec.data.training_file = dir.path() + "/text.jsonl";
  r = Train(spec, {});
  ASSERT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("text line"), std::string::npos);

  // Nothing kept and no gold: nothing to train on.
  WriteLines(dir.path() + "/never.jsonl",
             {ChatLine("What is 2 plus 3?", "2 plus 3 is 123456789.")});
  spec.data.training_file = dir.path() + "/never.jsonl";
  spec.self_training.include_gold = false;
  r = Train(spec, {});
  ASSERT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_EQ(ErrorFieldOf(r.status()), "self_training.include_gold");

  // Settings.
  RunSpec bad = RftSpec(dir.path(), dir.path() + "/never.jsonl", 1);
  bad.self_training.answer_extractor = "regex";
  bad.self_training.answer_pattern = "(unclosed";
  r = Train(bad, {});
  ASSERT_TRUE(absl::IsInvalidArgument(r.status()));
  EXPECT_NE(r.status().message().find("self_training.answer_pattern"),
            std::string::npos)
      << r.status();
  bad = RftSpec(dir.path(), dir.path() + "/never.jsonl", 1);
  bad.objective = OrpoSpec{.max_prompt_len = 64};
  r = Train(bad, {});
  ASSERT_TRUE(absl::IsInvalidArgument(r.status()));
  EXPECT_NE(r.status().message().find("self_training.iterations"),
            std::string::npos)
      << r.status();
  bad = RftSpec(dir.path(), dir.path() + "/never.jsonl", 17);
  EXPECT_TRUE(absl::IsInvalidArgument(Train(bad, {}).status()));
}

// SPIN (METHODS.md §7.1): each iteration's first loss is ln 2 (the policy
// is its opponent: for iteration 2, iteration 1's final weights); with
// greedy generation the rejected side is Generate's output, replayed here;
// after iteration 1 the margin is positive; iteration 2 trains on its own
// pairs and iteration 1's; a run stopped in iteration 2 resumes to the
// uninterrupted run's adapter (the opponent's log-probabilities travel in
// the checkpoint).
TEST_F(RftTest, SpinStartsEachIterationAtLn2AndRejectsTheGreedyGeneration) {
  testing::TempDir data, whole, stopped;
  const std::string train = TrainingFile(data.path());
  auto spin_spec = [&](const std::string& dir) {
    RunSpec spec = RftSpec(dir, train, 2);
    spec.objective = DpoSpec{.beta = 0.1, .max_prompt_len = 64};
    spec.self_training.samples_per_prompt = 1;
    spec.self_training.temperature = 0;  // greedy: SPIN's HF path
    spec.schedule.n_epochs = 3;
    return spec;
  };
  Out w = TrainRun(spin_spec(whole.path()), 0);
  ASSERT_TRUE(w.result.ok()) << w.result.status();
  ASSERT_EQ(w.result->iterations.size(), 2u);
  const IterationReport& one = w.result->iterations[0];
  const IterationReport& two = w.result->iterations[1];
  ASSERT_GT(one.last_step, 1);
  for (const StepMetrics& m : w.steps) {
    if (m.step == 1 || m.step == one.last_step + 1) {
      EXPECT_NEAR(m.loss, std::log(2.0), 1e-6) << "step " << m.step;
      EXPECT_NEAR(m.values.at("rewards/margins"), 0, 1e-6);
    }
  }
  EXPECT_GT(w.steps[one.last_step - 1].values.at("rewards/margins"), 0);
  EXPECT_LT(w.steps[one.last_step - 1].loss, std::log(2.0));

  // The rejected side of iteration 1 is greedy Generate from the job's
  // model (LoRA's B = 0), decoded and left-stripped.
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Load(SamplerDir());
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(SamplerDir());
  ASSERT_TRUE(tokenizer.ok());
  absl::StatusOr<ChatTemplate> chat = ChatTemplateFor(**tokenizer, "");
  ASSERT_TRUE(chat.ok());
  std::vector<Json> expected;
  for (size_t j = 0; j < Sums().size(); ++j) {
    absl::StatusOr<Encoding> prompt = (*tokenizer)->Encode(
        chat->RenderPrompt({{.role = "user", .content = Question(j)}}));
    ASSERT_TRUE(prompt.ok());
    absl::StatusOr<std::vector<int32_t>> ids = Generate(
        **model, prompt->ids,
        {.max_new_tokens = 12, .stop_ids = {(*tokenizer)->eos_id()}});
    ASSERT_TRUE(ids.ok());
    if (!ids->empty() && ids->back() == (*tokenizer)->eos_id()) ids->pop_back();
    absl::StatusOr<std::string> text = (*tokenizer)->Decode(*ids);
    ASSERT_TRUE(text.ok());
    const std::string rejected(absl::StripLeadingAsciiWhitespace(*text));
    if (absl::StripAsciiWhitespace(rejected).empty()) continue;
    const auto [a, b] = Sums()[j];
    expected.push_back(
        {{"input", {{"messages", {{{"role", "user"}, {"content", Question(j)}}}}}},
         {"preferred_output",
          {{{"role", "assistant"},
            {"content", absl::StrCat(a, " plus ", b, " is ", a + b, ".")}}}},
         {"non_preferred_output", {{{"role", "assistant"}, {"content", rejected}}}}});
  }
  ASSERT_FALSE(expected.empty());
  ASSERT_EQ(w.checkpoints.size(), 2u);
  EXPECT_EQ(JsonLines(w.checkpoints[0].dir + "/" + kIterationNewFile), expected);
  EXPECT_EQ(one.rft_examples, static_cast<int64_t>(expected.size()));
  // Iteration 2: its own pairs, then iteration 1's.
  std::vector<Json> second =
      JsonLines(w.checkpoints[1].dir + "/" + kIterationTrainFile);
  ASSERT_EQ(static_cast<int64_t>(second.size()), two.kept + one.kept);
  EXPECT_EQ(two.rft_examples, two.kept + one.kept);
  EXPECT_EQ(std::vector<Json>(second.begin() + two.kept, second.end()), expected);

  // Stopped in iteration 2, resumed: the same adapter.
  RunSpec stop_spec = spin_spec(stopped.path());
  Out s = TrainRun(stop_spec, one.last_step + 1);
  ASSERT_TRUE(absl::IsAborted(s.result.status())) << s.result.status();
  stop_spec.checkpoint.resume_from = s.checkpoints.back().dir;
  Out resumed = TrainRun(stop_spec, 0);
  ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
  const std::string adapter = "/adapter/adapter_model.safetensors";
  absl::StatusOr<TensorMap> x = LoadSafetensors(whole.path() + adapter);
  absl::StatusOr<TensorMap> y = LoadSafetensors(stopped.path() + adapter);
  ASSERT_TRUE(x.ok() && y.ok());
  for (const auto& [name, tensor] : *x) {
    EXPECT_TRUE(torch::equal(tensor, y->at(name))) << name;
  }

  // SPIN takes one generation per prompt and chat lines.
  RunSpec bad = spin_spec(stopped.path());
  bad.self_training.samples_per_prompt = 2;
  absl::StatusOr<TrainResult> refused = Train(bad, {});
  ASSERT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_NE(refused.status().message().find("self_training.samples_per_prompt"),
            std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace lathe::engine
