#include "worker/engine/engine_cli.h"

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "nlohmann/json.hpp"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "worker/engine/demo.h"
#include "worker/engine/json_file.h"
#include "worker/engine/train_spec.h"
#include "worker/engine/trainer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

constexpr char kUsage[] =
    "usage:\n"
    "  %s train SPEC.json       train a LoRA adapter locally\n"
    "  %s make-demo --out DIR   write a tiny demo model and data set\n";

int Fail(const absl::Status& status) {
  std::cerr << "error: " << status << "\n";
  return 1;
}

int TrainCommand(const std::string& spec_path) {
  absl::StatusOr<Json> spec = ReadJsonFile(spec_path);
  if (!spec.ok()) return Fail(spec.status());
  const std::string base_dir =
      std::filesystem::absolute(spec_path).parent_path().string();
  absl::StatusOr<TrainOptions> options = ParseTrainSpec(*spec, base_dir);
  if (!options.ok()) return Fail(options.status());
  spdlog::info("train spec: {}", TrainSpecJson(*options).dump());
  absl::StatusOr<TrainResult> result = Train(
      *options,
      [](const StepMetrics& m) {
        std::cout << Json{{"step", m.step},
                          {"total_steps", m.total_steps},
                          {"loss", m.loss},
                          {"token_accuracy", m.token_accuracy},
                          {"learning_rate", m.learning_rate},
                          {"grad_norm", m.grad_norm},
                          {"tokens_per_second", m.tokens_per_second},
                          {"trained_tokens", m.trained_tokens}}
                         .dump()
                  << std::endl;
      },
      nullptr);
  if (!result.ok()) return Fail(result.status());
  Json summary = {{"steps", result->steps},
                  {"trained_tokens", result->trained_tokens},
                  {"truncated_examples", result->truncated_examples},
                  {"first_loss", result->first_loss},
                  {"last_loss", result->last_loss},
                  {"adapter_dir", options->output_dir}};
  if (result->validation_loss.has_value()) {
    summary["validation_loss"] = *result->validation_loss;
  }
  std::cout << Json{{"summary", summary}}.dump() << std::endl;
  return 0;
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
    std::fprintf(stderr, kUsage, argv[0], argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace lathe::engine
