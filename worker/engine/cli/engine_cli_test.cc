#include "worker/engine/cli/engine_cli.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/cli/demo.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

int RunCli(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return RunEngineCommand(static_cast<int>(argv.size()), argv.data());
}

using Json = nlohmann::json;

// Runs the CLI, returning its exit code and its stdout lines as JSON.
int RunCliJson(std::vector<std::string> args, std::vector<Json>* lines) {
  ::testing::internal::CaptureStdout();
  const int code = RunCli(std::move(args));
  std::stringstream out(::testing::internal::GetCapturedStdout());
  std::string line;
  while (std::getline(out, line)) lines->push_back(Json::parse(line));
  return code;
}

std::vector<Json> ExpectedLines(const std::string& fixture) {
  std::ifstream in(fixture + "/expected.jsonl");
  std::vector<Json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(Json::parse(line));
  return out;
}

// The float32 tensor `name` of a safetensors file, flattened.
std::vector<float> ReadFloats(const std::string& path, const std::string& name,
                              std::vector<int64_t>* shape) {
  auto file = safetensors::MappedFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return {};
  const safetensors::TensorInfo* info = (*file)->header().Find(name);
  EXPECT_NE(info, nullptr);
  if (info == nullptr || info->dtype != safetensors::Dtype::kF32) return {};
  *shape = info->shape;
  const auto data = (*file)->Data(*info);
  std::vector<float> out(data.size() / sizeof(float));
  std::memcpy(out.data(), data.data(), data.size());
  return out;
}

TEST(EngineCliTest, TokenizeChatReproducesHuggingFace) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  std::vector<Json> lines;
  ASSERT_EQ(RunCliJson({"lathe-worker", "tokenize", "--model",
                        fixture + "/model", "--chat", fixture + "/train.jsonl",
                        "--mask", "last", "-o", "json"},
                       &lines),
            0);
  const std::vector<Json> expected = ExpectedLines(fixture);
  ASSERT_EQ(lines.size(), expected.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["rendered"], expected[i]["rendered"]) << i;
    EXPECT_EQ(lines[i]["input_ids"], expected[i]["input_ids"]) << i;
    EXPECT_EQ(lines[i]["loss_mask"], expected[i]["assistant_mask"]) << i;
  }
  lines.clear();
  ASSERT_EQ(RunCliJson({"lathe-worker", "tokenize", "--model",
                        fixture + "/model", "--text", "a</s>"},
                       &lines),
            0);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["input_ids"].back(), 2);

  // Plain text needs no chat template (SmolLM2's config has none).
  const std::string smollm2 =
      std::string(LATHE_FIXTURES_DIR) + "/tokenizers/smollm2";
  testing::TempDir dir;
  std::ofstream(dir.path() + "/text.jsonl") << R"({"text":"Hi there"})";
  lines.clear();
  ASSERT_EQ(RunCliJson({"lathe-worker", "tokenize", "--model", smollm2,
                        "--chat", dir.path() + "/text.jsonl"},
                       &lines),
            0);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["input_ids"].back(), 0);  // <|endoftext|>
  EXPECT_FALSE(lines[0].contains("rendered"));
}

// --add-special-tokens: what Hugging Face's encode(text) adds by default,
// BOS (1) for TinyLlama (add_bos_token), nothing for SmolLM2 (whose
// tokenizer.json's post-processor adds none).
TEST(EngineCliTest, TokenizeAddSpecialTokensAddsWhatHuggingFaceAdds) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  auto tokenize = [](const std::string& model, bool special) {
    std::vector<std::string> args = {"lathe-worker", "tokenize", "--model",
                                     model,          "--text",   "Hi</s>"};
    if (special) args.push_back("--add-special-tokens");
    std::vector<Json> lines;
    EXPECT_EQ(RunCliJson(args, &lines), 0);
    return lines.size() == 1 ? lines[0]["input_ids"] : Json();
  };
  const Json plain = tokenize(fixture + "/model", false);
  ASSERT_TRUE(plain.is_array());
  Json with_bos = Json::array({1});
  for (const Json& id : plain) with_bos.push_back(id);
  EXPECT_EQ(tokenize(fixture + "/model", true), with_bos);

  const std::string smollm2 =
      std::string(LATHE_FIXTURES_DIR) + "/tokenizers/smollm2";
  const Json smollm2_plain = tokenize(smollm2, false);
  ASSERT_TRUE(smollm2_plain.is_array());
  EXPECT_EQ(tokenize(smollm2, true), smollm2_plain);

  // Not with data files; a switch takes no value.
  EXPECT_EQ(
      RunCli({"lathe-worker", "tokenize", "--model", fixture + "/model",
              "--chat", fixture + "/train.jsonl", "--add-special-tokens"}),
      1);
}

TEST(EngineCliTest, ScoreReproducesHuggingFaceLossesAndLogits) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  testing::TempDir dir;
  const std::string logits_path = dir.path() + "/logits.safetensors";
  std::vector<Json> lines;
  ASSERT_EQ(RunCliJson({"lathe-worker", "score", "--model", fixture + "/model",
                        "--data", fixture + "/train.jsonl", "--mask", "last",
                        "--logits-out", logits_path, "-o", "json"},
                       &lines),
            0);
  const std::vector<Json> expected = ExpectedLines(fixture);
  ASSERT_EQ(lines.size(), expected.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_NEAR(lines[i]["loss_all"].get<double>(),
                expected[i]["loss_all"].get<double>(), 1e-4)
        << i;
    EXPECT_NEAR(lines[i]["loss"].get<double>(),
                expected[i]["loss_assistant"].get<double>(), 1e-4)
        << i;
    EXPECT_EQ(lines[i]["logprobs"].size(), lines[i]["input_ids"].size() - 1);
  }
  std::vector<int64_t> shape, expected_shape;
  const std::vector<float> logits = ReadFloats(logits_path, "logits", &shape);
  const std::vector<float> reference =
      ReadFloats(fixture + "/logits0.safetensors", "logits", &expected_shape);
  EXPECT_EQ(shape, expected_shape);
  ASSERT_EQ(logits.size(), reference.size());
  float worst = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    worst = std::max(worst, std::abs(logits[i] - reference[i]));
  }
  EXPECT_LT(worst, 1e-4);
}

TEST(EngineCliTest, ScoreWithAdapterMatchesPeftLogits) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  testing::TempDir dir;
  const std::string logits_path = dir.path() + "/logits.safetensors";
  std::vector<Json> lines;
  ASSERT_EQ(RunCliJson({"lathe-worker", "score", "--model", fixture + "/model",
                        "--adapter", fixture + "/adapter_ref", "--data",
                        fixture + "/train.jsonl", "--logits-out", logits_path},
                       &lines),
            0);
  std::vector<int64_t> shape, expected_shape;
  const std::vector<float> logits = ReadFloats(logits_path, "logits", &shape);
  const std::vector<float> reference = ReadFloats(
      fixture + "/lora_logits0.safetensors", "logits", &expected_shape);
  EXPECT_EQ(shape, expected_shape);
  ASSERT_EQ(logits.size(), reference.size());
  float worst = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    worst = std::max(worst, std::abs(logits[i] - reference[i]));
  }
  EXPECT_LT(worst, 1e-4);
}

TEST(EngineCliTest, GenerateIsGreedyOrSeeded) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  auto generate = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {
        "lathe-worker",     "generate", "--model",
        fixture + "/model", "--chat",   fixture + "/train.jsonl",
        "--max-new-tokens", "6"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<Json> lines;
    EXPECT_EQ(RunCliJson(args, &lines), 0);
    return lines.empty() ? Json() : lines[0];
  };
  const Json greedy = generate({});
  ASSERT_TRUE(greedy.is_object());
  EXPECT_LE(greedy["output_ids"].size(), 6u);
  EXPECT_GE(greedy["output_ids"].size(), 1u);
  // The prompt ends with the zephyr generation prompt.
  const std::string prompt = greedy["prompt"];
  EXPECT_EQ(prompt.substr(prompt.size() - 14), "<|assistant|>\n");
  EXPECT_EQ(generate({})["output_ids"], greedy["output_ids"]);
  const Json sampled =
      generate({"--temperature", "1", "--top-p", "0.9", "--seed", "7"});
  EXPECT_EQ(generate({"--temperature", "1", "--top-p", "0.9", "--seed",
                      "7"})["output_ids"],
            sampled["output_ids"]);
}

// Logit fusion (--expert / --anti-expert) runs on models of one tokenizer
// and refuses another's, naming the flag.
TEST(EngineCliTest, GenerateWithExpertsNeedsOneTokenizer) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  const std::string model = fixture + "/model";
  std::vector<Json> lines;
  EXPECT_EQ(RunCliJson({"lathe-worker", "generate", "--model", model, "--prompt", "2+2",
                        "--max-new-tokens", "3", "--expert", model, "--anti-expert", model,
                        "--alpha", "0.5"},
                       &lines),
            0);
  ASSERT_EQ(lines.size(), 1u);
  // expert = anti-expert: the model's own greedy tokens.
  std::vector<Json> plain;
  EXPECT_EQ(RunCliJson({"lathe-worker", "generate", "--model", model, "--prompt", "2+2",
                        "--max-new-tokens", "3"},
                       &plain),
            0);
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_EQ(lines[0]["output_ids"], plain[0]["output_ids"]);

  testing::TempDir demo;
  ASSERT_TRUE(MakeDemo(demo.path()).ok());
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(RunCli({"lathe-worker", "generate", "--model", model, "--prompt", "2+2",
                    "--expert", demo.path() + "/model", "--anti-expert", model}),
            1);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--expert: "), std::string::npos) << err;
  EXPECT_NE(err.find("share a tokenizer"), std::string::npos) << err;
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(RunCli({"lathe-worker", "generate", "--model", model, "--prompt", "2+2",
                    "--expert", model}),
            1);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("--anti-expert"), std::string::npos);
}

// analyze: a file of the demo's first 20 conversations, the 3rd repeated
// at the end and a validation conversation among them. The report names
// the duplicate and the overlap by line, its losses are the score
// command's, and selected.jsonl is the other lines verbatim; a loss
// quantile selection drops the tails.
TEST(EngineCliTest, AnalyzeReportsDuplicatesOverlapAndLossAndSelects) {
  testing::TempDir dir;
  ASSERT_TRUE(MakeDemo(dir.path()).ok());
  std::vector<std::string> train, valid;
  {
    std::ifstream t(dir.path() + "/train.jsonl"), v(dir.path() + "/valid.jsonl");
    for (std::string line; std::getline(t, line);) train.push_back(line);
    for (std::string line; std::getline(v, line);) valid.push_back(line);
  }
  std::vector<std::string> data(train.begin(), train.begin() + 20);
  data.push_back(valid[4]);  // line 21
  data.push_back(train[2]);  // line 22: line 3 again
  const std::string file = dir.path() + "/data.jsonl";
  {
    std::ofstream out(file);
    for (const std::string& line : data) out << line << "\n";
  }
  const std::string model = dir.path() + "/model";
  std::vector<Json> summary;
  ASSERT_EQ(RunCliJson({"lathe-worker", "analyze", "--model", model, "--data", file,
                        "--validation", dir.path() + "/valid.jsonl", "--out",
                        dir.path() + "/analysis"},
                       &summary),
            0);
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_EQ(summary[0]["summary"]["examples"], 22);
  std::vector<Json> report;
  {
    std::ifstream in(dir.path() + "/analysis/report.jsonl");
    for (std::string line; std::getline(in, line);) report.push_back(Json::parse(line));
  }
  ASSERT_EQ(report.size(), 22u);
  // Exact duplicates and exact validation overlaps, found by comparing the
  // lines' text (the demo's generator repeats some conversations too).
  int64_t exact = 0, kept = 0;
  std::vector<std::string> kept_lines;
  for (size_t i = 0; i < data.size(); ++i) {
    const auto first = std::find(data.begin(), data.begin() + i, data[i]);
    if (first != data.begin() + i) {
      ++exact;
      EXPECT_EQ(report[i]["exact_duplicate_of"], first - data.begin() + 1) << i;
    } else {
      EXPECT_TRUE(report[i]["exact_duplicate_of"].is_null()) << i;
    }
    const auto in_valid = std::find(valid.begin(), valid.end(), data[i]);
    if (in_valid != valid.end()) {
      EXPECT_FALSE(report[i]["validation_overlap"].is_null()) << i;
      EXPECT_EQ(report[i]["validation_jaccard"], 1.0) << i;
    }
    EXPECT_EQ(report[i]["kept"], report[i]["reasons"].empty()) << i;
    if (report[i]["kept"]) {
      ++kept;
      kept_lines.push_back(data[i]);
    }
  }
  EXPECT_EQ(report[21]["exact_duplicate_of"], 3);
  EXPECT_EQ(report[21]["reasons"][0], "exact_duplicate_of_line_3");
  EXPECT_FALSE(report[20]["validation_overlap"].is_null());
  EXPECT_EQ(report[20]["kept"], false);
  EXPECT_EQ(summary[0]["summary"]["exact_duplicates"], exact);
  EXPECT_EQ(summary[0]["summary"]["kept"], kept);
  // The loss is the score command's (ScoreExample's mean over the
  // assistant tokens).
  std::vector<Json> scored;
  ASSERT_EQ(RunCliJson({"lathe-worker", "score", "--model", model, "--data", file}, &scored), 0);
  ASSERT_EQ(scored.size(), 22u);
  for (size_t i = 0; i < 22; ++i) {
    EXPECT_NEAR(report[i]["loss"].get<double>(), scored[i]["loss"].get<double>(), 1e-5) << i;
  }
  std::vector<std::string> selected;
  {
    std::ifstream in(dir.path() + "/analysis/selected.jsonl");
    for (std::string line; std::getline(in, line);) selected.push_back(line);
  }
  EXPECT_EQ(selected, kept_lines);

  summary.clear();
  ASSERT_EQ(RunCliJson({"lathe-worker", "analyze", "--model", model, "--data", file, "--out",
                        dir.path() + "/tails", "--select-loss-quantile", "0.1,0.9",
                        "--keep-duplicates"},
                       &summary),
            0);
  // Without duplicates dropped, 22 losses: the lowest and highest 10 %
  // fall outside the interpolated quantiles (2 or 3 at each end).
  const int64_t tails_kept = summary[0]["summary"]["kept"];
  EXPECT_GE(tails_kept, 16);
  EXPECT_LE(tails_kept, 20);
  EXPECT_EQ(RunCli({"lathe-worker", "analyze", "--model", model, "--data", file, "--out",
                    dir.path() + "/x", "--select-loss-quantile", "0.9,0.1"}),
            1);
}

TEST(EngineCliTest, BadUsageReturnsTwo) {
  EXPECT_EQ(RunCli({"lathe-worker"}), 2);
  EXPECT_EQ(RunCli({"lathe-worker", "frobnicate"}), 2);
  EXPECT_EQ(RunCli({"lathe-worker", "make-demo", "DIR"}), 2);
  EXPECT_EQ(RunCli({"lathe-worker", "tokenize", "--text", "x"}), 2);
  EXPECT_EQ(RunCli({"lathe-worker", "score", "--model", "m", "--bogus", "x"}),
            2);
  EXPECT_EQ(RunCli({"lathe-worker", "tokenize", "--model", "m", "-o", "csv"}),
            2);
}

TEST(EngineCliTest, MissingSpecFails) {
  EXPECT_EQ(RunCli({"lathe-worker", "train", "/nonexistent/spec.json"}), 1);
}

TEST(EngineCliTest, MakeDemoThenTrainPrintsStepsAndSummary) {
  testing::TempDir dir;
  ASSERT_EQ(RunCli({"lathe-worker", "make-demo", "--out", dir.path()}), 0);
  // One epoch through a spec with a relative output.dir.
  std::ifstream in(dir.path() + "/spec.json");
  nlohmann::json spec = nlohmann::json::parse(in);
  spec["schedule"]["n_epochs"] = 1;
  spec["output"]["dir"] = "out";
  std::ofstream(dir.path() + "/one.json") << spec.dump();

  ::testing::internal::CaptureStdout();
  const int code = RunCli({"lathe-worker", "train", dir.path() + "/one.json"});
  std::stringstream out(::testing::internal::GetCapturedStdout());
  ASSERT_EQ(code, 0);
  std::string line;
  std::vector<nlohmann::json> lines;
  while (std::getline(out, line)) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 21u);  // 20 steps + summary
  EXPECT_EQ(lines[0]["step"], 1);
  EXPECT_EQ(lines[19]["total_steps"], 20);
  EXPECT_EQ(lines[20]["summary"]["steps"], 20);
  EXPECT_EQ(lines[20]["summary"]["padding_tokens"], 0);  // packed by default
  EXPECT_GT(lines[20]["summary"]["loss_peak_bytes"], 0);
  EXPECT_EQ(lines[20]["summary"]["adapter_dir"], dir.path() + "/out");
  EXPECT_TRUE(
      std::filesystem::exists(dir.path() + "/out/adapter_model.safetensors"));
}

// merge on folders: a trained LoRA adapter, merged twice with weights that
// sum to 1, is the adapter merged into the base; the re-factorised adapter
// (rank 8 = the adapter's) scores as the merged folder; a greedy soup
// reports its steps.
TEST(EngineCliTest, MergeWritesAModelFolderAndALoraAdapter) {
  testing::TempDir dir;
  const std::string d = dir.path();
  ASSERT_EQ(RunCli({"lathe-worker", "make-demo", "--out", d}), 0);
  std::ifstream in(d + "/spec.json");
  nlohmann::json spec = nlohmann::json::parse(in);
  spec["schedule"]["n_epochs"] = 1;
  std::ofstream(d + "/one.json") << spec.dump();
  std::vector<Json> lines;
  ASSERT_EQ(RunCliJson({"lathe-worker", "train", d + "/one.json"}, &lines), 0);
  const std::string adapter = lines.back()["summary"]["adapter_dir"];

  lines.clear();
  ASSERT_EQ(
      RunCliJson({"lathe-worker", "merge", "--base", d + "/model", "--inputs",
                  adapter + "," + adapter, "--method", "task_arithmetic",
                  "--weights", "0.25,0.75", "--out", d + "/merged",
                  "--lora-out", d + "/lora", "--lora-rank", "8"},
                 &lines),
      0);
  ASSERT_GE(lines.size(), 2u);
  const Json summary = lines.back()["summary"];
  EXPECT_EQ(summary["tensors"], lines.size() - 1);
  EXPECT_EQ(lines[0]["tensor"], 1);
  EXPECT_EQ(lines[0]["total"], summary["tensors"]);
  EXPECT_EQ(summary["method"], "task_arithmetic");
  EXPECT_EQ(summary["lora_target_modules"].size(), 7u);
  EXPECT_TRUE(summary["lora_dropped_tensors"].empty());

  auto loss = [&](std::vector<std::string> model) {
    std::vector<std::string> args = {"lathe-worker", "score", "--data",
                                     d + "/valid.jsonl"};
    args.insert(args.end(), model.begin(), model.end());
    std::vector<Json> scored;
    EXPECT_EQ(RunCliJson(args, &scored), 0);
    return scored.empty() ? NAN : scored[0]["loss"].get<double>();
  };
  const double trained = loss({"--model", d + "/model", "--adapter", adapter});
  EXPECT_NEAR(loss({"--model", d + "/merged"}), trained, 1e-4);
  EXPECT_NEAR(loss({"--model", d + "/model", "--adapter", d + "/lora"}),
              trained, 1e-4);
  EXPECT_GT(std::abs(loss({"--model", d + "/model"}) - trained), 1e-3);

  lines.clear();
  ASSERT_EQ(RunCliJson(
                {"lathe-worker", "merge", "--base", d + "/model", "--inputs",
                 adapter + "," + d + "/merged", "--method", "greedy_soup",
                 "--validation-file", d + "/valid.jsonl", "--out", d + "/soup"},
                &lines),
            0);
  int steps = 0;
  for (const Json& line : lines) steps += line.contains("soup_step");
  EXPECT_EQ(steps, 4);  // 2 scored, 2 tried
  EXPECT_TRUE(lines.back()["summary"].contains("validation_loss"));

  // Errors: an input that is no model (1), an unknown method (1), no --base
  // (usage, 2).
  EXPECT_EQ(RunCli({"lathe-worker", "merge", "--base", d + "/model", "--inputs",
                    d, "--out", d + "/x"}),
            1);
  EXPECT_EQ(RunCli({"lathe-worker", "merge", "--base", d + "/model", "--inputs",
                    adapter, "--method", "soup", "--out", d + "/x"}),
            1);
  EXPECT_EQ(RunCli({"lathe-worker", "merge", "--inputs", adapter}), 2);
}

}  // namespace
}  // namespace lathe::engine
