#include "worker/engine/inference/analyze.h"

#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/inference/generate.h"
#include "worker/engine/inference/score.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

class AnalyzeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  static std::string Model() { return demo_->path() + "/model"; }

  static std::vector<std::string> ReadLinesOf(const std::string& path) {
    std::vector<std::string> out;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }

  static void WriteLines(const std::string& path,
                         const std::vector<std::string>& lines) {
    std::ofstream out(path);
    for (const std::string& line : lines) out << line << "\n";
  }

  static std::vector<Json> Report(const std::string& dir) {
    std::vector<Json> out;
    for (const std::string& line : ReadLinesOf(dir + "/report.jsonl")) {
      out.push_back(Json::parse(line));
    }
    return out;
  }

  static testing::TempDir* demo_;
};
testing::TempDir* AnalyzeTest::demo_ = nullptr;

// Batched scoring (padded rows, longest first) gives each example's
// loss and mean-pooled hidden state as one example per forward does, and
// the loss is ScoreExample's (a full-logits forward of its own).
TEST_F(AnalyzeTest, BatchedScoringEqualsOneAtATime) {
  std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(Model()).value();
  std::unique_ptr<LlamaModel> model = LlamaModel::Load(Model()).value();
  absl::StatusOr<Dataset> data =
      LoadChatDataset(demo_->path() + "/train.jsonl", *tokenizer,
                      ChatTemplateFor(*tokenizer, ""), 512);
  ASSERT_TRUE(data.ok()) << data.status();
  std::vector<Example> examples(data->examples.begin(),
                                data->examples.begin() + 23);
  std::vector<int64_t> done;
  absl::StatusOr<std::vector<ExampleScore>> one =
      ScoreExamples(*model, examples, 1, tokenizer->pad_id(), true);
  absl::StatusOr<std::vector<ExampleScore>> batched =
      ScoreExamples(*model, examples, 7, tokenizer->pad_id(), true,
                    [&](int64_t n) { done.push_back(n); });
  ASSERT_TRUE(one.ok() && batched.ok());
  EXPECT_EQ(done, (std::vector<int64_t>{7, 14, 21, 23}));
  // The rows of a batch differ in length: padding is exercised.
  std::set<size_t> lengths;
  for (const Example& e : examples) lengths.insert(e.ids.size());
  ASSERT_GT(lengths.size(), 3u);
  for (size_t i = 0; i < examples.size(); ++i) {
    const ExampleScore &a = (*one)[i], &b = (*batched)[i];
    EXPECT_NEAR(a.loss, b.loss, 1e-5) << i;
    EXPECT_EQ(a.targets, b.targets);
    ASSERT_EQ(a.embedding.size(), 64u);
    ASSERT_EQ(b.embedding.size(), 64u);
    for (size_t k = 0; k < 64; ++k) {
      EXPECT_NEAR(a.embedding[k], b.embedding[k], 1e-5) << i << " " << k;
    }
    absl::StatusOr<Scores> alone = ScoreExample(*model, examples[i]);
    ASSERT_TRUE(alone.ok());
    EXPECT_NEAR(b.loss, alone->loss, 1e-5) << i;
  }
  EXPECT_EQ(ScoreExamples(*model, examples, 0, 0, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// METHODS.md §8.2's defining test: memorise 32 clean pairs (LoRA, lr 1e-3,
// 200 steps), add 4 pairs whose responses are random tokens; scored by
// log-likelihood under the fine-tune, the 4 are the 4 lowest, and the
// bottom-fraction filter drops exactly them, naming the score.
TEST_F(AnalyzeTest, ClearLogLikelihoodRanksCorruptedPairsLowest) {
  testing::TempDir dir;
  const std::vector<std::string> demo =
      ReadLinesOf(demo_->path() + "/train.jsonl");
  // 32 distinct clean lines (the demo repeats a few).
  std::vector<std::string> clean;
  for (const std::string& line : demo) {
    if (clean.size() < 32 &&
        std::find(clean.begin(), clean.end(), line) == clean.end()) {
      clean.push_back(line);
    }
  }
  ASSERT_EQ(clean.size(), 32u);
  WriteLines(dir.path() + "/clean.jsonl", clean);
  absl::StatusOr<Json> json = ReadJsonFile(demo_->path() + "/spec.json");
  ASSERT_TRUE(json.ok());
  absl::StatusOr<RunSpec> spec = ParseRunSpec(*json, demo_->path());
  ASSERT_TRUE(spec.ok()) << spec.status();
  spec->data.training_file = dir.path() + "/clean.jsonl";
  spec->optimizer.learning_rate = 1e-3;
  spec->schedule.n_epochs = 25;  // 32 / batch 4 = 8 steps an epoch: 200
  spec->schedule.lr_scheduler = "constant";
  spec->output.dir = dir.path() + "/adapter";
  absl::StatusOr<TrainResult> trained = Train(*spec, {});
  ASSERT_TRUE(trained.ok()) << trained.status();
  EXPECT_EQ(trained->steps, 200);

  // Corrupt 4 other prompts' responses: random token ids, shuffled order,
  // decoded to text.
  std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(Model()).value();
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(3, tokenizer->vocab_size() - 1);
  std::vector<std::string> lines = clean;
  const std::vector<size_t> corrupted_at = {3, 11, 24, 34};
  for (size_t k = 0; k < corrupted_at.size(); ++k) {
    Json line = Json::parse(demo[40 + k]);
    std::vector<int32_t> ids(12);
    for (int32_t& v : ids) v = id(rng);
    std::shuffle(ids.begin(), ids.end(), rng);
    line["messages"].back()["content"] = tokenizer->Decode(ids).value();
    lines.insert(lines.begin() + corrupted_at[k], line.dump());
  }
  ASSERT_EQ(lines.size(), 36u);
  WriteLines(dir.path() + "/data.jsonl", lines);

  AnalyzeSpec a{.model_dir = Model(),
                .adapter_dir = dir.path() + "/adapter",
                .data_file = dir.path() + "/data.jsonl",
                .select = AnalyzeSelection::kClear,
                .keep_duplicates = true,
                .out_dir = dir.path() + "/analysis"};
  a.clear.filter = {.score = ClearScore::kLogLikelihood,
                    .drop_fraction = 4.0 / 36 + 1e-6};
  absl::StatusOr<AnalyzeSummary> summary = AnalyzeData(a);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->kept, 32);
  const std::vector<Json> report = Report(a.out_dir);
  ASSERT_EQ(report.size(), 36u);
  std::vector<std::pair<double, size_t>> by_score;
  for (size_t i = 0; i < 36; ++i) {
    by_score.push_back({report[i]["clear_score"].get<double>(), i});
    // The score is the mean log-probability of the trained tokens.
    EXPECT_NEAR(report[i]["clear_score"].get<double>(),
                -report[i]["loss"].get<double>(), 1e-12);
    EXPECT_EQ(report[i]["clear_log_likelihood"], report[i]["clear_score"]);
  }
  std::sort(by_score.begin(), by_score.end());
  std::set<size_t> lowest;
  for (size_t k = 0; k < 4; ++k) lowest.insert(by_score[k].second);
  EXPECT_EQ(lowest, std::set<size_t>(corrupted_at.begin(), corrupted_at.end()));
  for (size_t i : corrupted_at) {
    EXPECT_EQ(report[i]["kept"], false) << i;
    ASSERT_EQ(report[i]["reasons"].size(), 1u);
    EXPECT_EQ(report[i]["reasons"][0].get<std::string>().rfind(
                  "clear_log_likelihood_in_bottom_0.11", 0),
              0u)
        << report[i]["reasons"];
  }
  EXPECT_EQ(ReadLinesOf(a.out_dir + "/selected.jsonl"), clean);

  // The confidence score on the same fine-tune, greedy (temperature 0):
  // O is each line's token F1 of the greedy reply against its response,
  // replayed here with Generate; the score is 0.7 O + 0.3 S, S in (0, 1).
  a.clear.filter = {.score = ClearScore::kConfidence, .threshold = 0.5};
  a.clear.consistency = {.samples = 2, .temperature = 0, .max_new_tokens = 48};
  a.out_dir = dir.path() + "/confidence";
  summary = AnalyzeData(a);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const std::vector<Json> confident = Report(a.out_dir);
  std::unique_ptr<LlamaModel> model = LlamaModel::Load(Model()).value();
  ASSERT_TRUE(LoadTrained(*model, dir.path() + "/adapter").ok());
  const ChatTemplate chat_template = ChatTemplateFor(*tokenizer, "").value();
  for (size_t i : {size_t{0}, size_t{3}, size_t{5}, size_t{34}}) {
    const Json line = Json::parse(lines[i]);
    std::vector<ChatMessage> before;
    for (size_t m = 0; m + 1 < line["messages"].size(); ++m) {
      before.push_back(
          {.role = line["messages"][m]["role"].get<std::string>(),
           .content = line["messages"][m]["content"].get<std::string>()});
    }
    const std::vector<int32_t> prompt =
        tokenizer->Encode(chat_template.RenderPrompt(before)).value().ids;
    std::vector<int32_t> reply =
        Generate(*model, prompt,
                 {.max_new_tokens = 48,
                  .stop_ids = ReplyStopIds(*tokenizer, &chat_template)})
            .value();
    if (!reply.empty() && (reply.back() == tokenizer->eos_id()))
      reply.pop_back();
    const double o =
        TokenF1(tokenizer->Decode(reply).value(),
                line["messages"].back()["content"].get<std::string>());
    EXPECT_NEAR(confident[i]["clear_consistency"].get<double>(), o, 1e-12) << i;
    const double s = confident[i]["clear_reflection"].get<double>();
    EXPECT_GT(s, 0);
    EXPECT_LT(s, 1);
    EXPECT_NEAR(confident[i]["clear_score"].get<double>(), 0.7 * o + 0.3 * s,
                1e-12);
    EXPECT_EQ(confident[i]["kept"], 0.7 * o + 0.3 * s >= 0.5) << i;
  }
  // The corrupted lines' responses are not what the model says.
  for (size_t i : corrupted_at) {
    EXPECT_LT(confident[i]["clear_consistency"].get<double>(), 0.5) << i;
    EXPECT_EQ(confident[i]["kept"], false) << i;
  }
}

// GOT-D through AnalyzeData: a file of capital and sum questions, a
// target of other capital questions; the budget's lines are all capital
// questions, every other line dropped as not selected, each with its
// gradient, and the lines' embeddings are what ScoreExamples gives.
TEST_F(AnalyzeTest, GotDSelectsTowardsTheTargetFile) {
  testing::TempDir dir;
  // The demo's kinds of question, written out: capitals and sums.
  auto chat = [](const std::string& question, const std::string& answer) {
    return Json{{"messages",
                 {{{"role", "user"}, {"content", question}},
                  {{"role", "assistant"}, {"content", answer}}}}}
        .dump();
  };
  const std::vector<std::pair<std::string, std::string>> countries = {
      {"France", "Paris"},  {"Germany", "Berlin"}, {"Italy", "Rome"},
      {"Spain", "Madrid"},  {"Japan", "Tokyo"},    {"Egypt", "Cairo"},
      {"Canada", "Ottawa"}, {"Peru", "Lima"},      {"Kenya", "Nairobi"},
      {"Norway", "Oslo"},   {"Greece", "Athens"},  {"Chile", "Santiago"}};
  std::vector<std::string> data, target;
  for (size_t i = 0; i < 8; ++i) {
    const int x = 1 + static_cast<int>(i), y = 9 - static_cast<int>(i) / 2;
    data.push_back(chat(absl::StrCat("What is ", x, " plus ", y, "?"),
                        absl::StrCat(x, " plus ", y, " is ", x + y, ".")));
    const auto& [country, capital] = countries[i];
    data.push_back(
        chat(absl::StrCat("What is the capital of ", country, "?"),
             absl::StrCat("The capital of ", country, " is ", capital, ".")));
  }
  for (size_t i = 8; i < countries.size(); ++i) {
    const auto& [country, capital] = countries[i];
    target.push_back(
        chat(absl::StrCat("What is the capital of ", country, "?"),
             absl::StrCat("The capital of ", country, " is ", capital, ".")));
  }
  WriteLines(dir.path() + "/data.jsonl", data);
  WriteLines(dir.path() + "/target.jsonl", target);
  AnalyzeSpec a{.model_dir = Model(),
                .data_file = dir.path() + "/data.jsonl",
                .batch_size = 5,
                .select = AnalyzeSelection::kGotD,
                .got_d = {.target_file = dir.path() + "/target.jsonl",
                          .target_file_name = "target_file file-t",
                          .budget = 4},
                .out_dir = dir.path() + "/analysis"};
  std::vector<std::pair<int64_t, int64_t>> progress;
  absl::StatusOr<AnalyzeSummary> summary =
      AnalyzeData(a, [&](int64_t done, int64_t total) {
        progress.push_back({done, total});
      });
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->kept, 4);
  EXPECT_GT(summary->got_d_epsilon, 0);
  EXPECT_LT(summary->got_d_marginal_error, 1e-8);
  ASSERT_FALSE(progress.empty());
  const int64_t lines = static_cast<int64_t>(data.size() + target.size());
  EXPECT_EQ(progress.back(), (std::pair<int64_t, int64_t>{lines, lines}));
  const std::vector<Json> report = Report(a.out_dir);
  ASSERT_EQ(report.size(), 16u);
  std::vector<std::string> kept;
  for (size_t i = 0; i < 16; ++i) {
    ASSERT_TRUE(report[i]["got_d_gradient"].is_number()) << i;
    if (report[i]["kept"]) {
      kept.push_back(data[i]);
      EXPECT_EQ(i % 2, 1u) << "a sum question selected: " << data[i];
    } else {
      EXPECT_EQ(report[i]["reasons"], Json::array({"got_d_not_selected"}));
    }
  }
  EXPECT_EQ(ReadLinesOf(a.out_dir + "/selected.jsonl"), kept);

  // Refused: no target, no budget, another selection's quantiles; a
  // target line that is not data names the target file.
  AnalyzeSpec bad = a;
  bad.got_d.target_file = "";
  EXPECT_NE(AnalyzeData(bad).status().message().find("target"),
            std::string::npos);
  bad = a;
  bad.got_d.budget = 0;
  EXPECT_NE(AnalyzeData(bad).status().message().find("budget"),
            std::string::npos);
  bad = a;
  bad.loss_quantile_low = 0.1;
  EXPECT_EQ(AnalyzeData(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  WriteLines(dir.path() + "/bad.jsonl", {target[0], "{\"nope\": 1}"});
  bad = a;
  bad.got_d.target_file = dir.path() + "/bad.jsonl";
  const absl::Status st = AnalyzeData(bad).status();
  EXPECT_NE(st.message().find("target_file file-t: line 2"), std::string::npos)
      << st;
}

TEST_F(AnalyzeTest, ClearRefusesTextLinesNamingTheLine) {
  testing::TempDir dir;
  WriteLines(dir.path() + "/text.jsonl",
             {"{\"text\": \"one\"}", "{\"text\": \"two\"}"});
  AnalyzeSpec a{.model_dir = Model(),
                .data_file = dir.path() + "/text.jsonl",
                .data_file_name = "training_file file-x",
                .select = AnalyzeSelection::kClear,
                .out_dir = dir.path() + "/analysis"};
  const absl::Status st = AnalyzeData(a).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("training_file file-x: line 1: a text line"),
            std::string::npos)
      << st;
}

}  // namespace
}  // namespace lathe::engine
