// engine_bench: training throughput of the engine on CPU (or whatever
// LibTorch runs on), on a small random Llama with the demo's tokenizer.
// Not a test: prints one line per configuration,
//   <config>: <tokens/s> tokens/s over <steps> steps (<warmup> warmup steps
//   excluded)
// Usage: engine_bench [measured_steps] (default 8).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/engine/demo.h"
#include "worker/engine/trainer.h"

namespace lathe::engine {
namespace {

constexpr int kWarmupSteps = 2;
constexpr int kBatch = 8;
constexpr int kSeqLen = 256;

// Writes `n` conversations long enough to be cut to kSeqLen tokens.
void WriteLongConversations(const std::string& path, int n) {
  std::ofstream out(path);
  for (int i = 0; i < n; ++i) {
    std::string answer;
    for (int j = 0; j < 40; ++j) {
      absl::StrAppend(&answer, "The capital of France is Paris. ", i + j,
                      " plus ", j, " is ", i + 2 * j, ". ");
    }
    out << nlohmann::json{{"messages",
                           {{{"role", "user"},
                             {"content", "Tell me some facts, please."}},
                            {{"role", "assistant"}, {"content", answer}}}}}
               .dump()
        << "\n";
  }
}

// Trains `options` for kWarmupSteps + `steps` steps and prints the
// throughput of the last `steps`.
int Bench(const std::string& label, const TrainOptions& options, int steps) {
  double tokens = 0, seconds = 0;
  TrainHooks hooks;
  int64_t previous_tokens = 0;
  hooks.on_step = [&](const StepMetrics& m) {
    const int64_t step_tokens = m.trained_tokens - previous_tokens;
    previous_tokens = m.trained_tokens;
    if (m.step <= kWarmupSteps) return;
    tokens += step_tokens;
    seconds += step_tokens / m.tokens_per_second;
  };
  absl::StatusOr<TrainResult> result = Train(options, hooks);
  if (!result.ok()) {
    std::cerr << label << ": " << result.status() << "\n";
    return 1;
  }
  std::cout << label << ": " << static_cast<int64_t>(tokens / seconds)
            << " tokens/s over " << steps << " steps (" << kWarmupSteps
            << " warmup steps excluded)" << std::endl;
  return 0;
}

int Main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 8;
  const std::string dir =
      (std::filesystem::temp_directory_path() / "lathe_engine_bench").string();
  std::filesystem::remove_all(dir);
  if (absl::Status s = MakeDemo(dir); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  if (absl::Status s = ResizeDemoModel(dir, {.hidden_size = 256,
                                             .intermediate_size = 688,
                                             .num_hidden_layers = 4,
                                             .num_attention_heads = 4,
                                             .num_key_value_heads = 4});
      !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  WriteLongConversations(dir + "/long.jsonl", kBatch * (kWarmupSteps + steps));

  TrainOptions options;
  options.model_dir = dir + "/model";
  options.training_file = dir + "/long.jsonl";
  options.output_dir = dir + "/out";
  options.n_epochs = 1;
  options.batch_size = kBatch;
  options.max_seq_len = kSeqLen;
  options.learning_rate = 1e-4;
  options.lora.rank = 16;
  options.lora.alpha = 32;
  options.lora.target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                 "gate_proj", "up_proj", "down_proj"};
  std::cout << "model: hidden 256, intermediate 688, 4 layers, 4 heads, "
               "vocab 384; batch "
            << kBatch << " x seq " << kSeqLen << "\n";
  int rc = Bench("lora r=16, all projections", options, steps);
  options.method = "full";
  options.output_dir = dir + "/out-full";
  rc |= Bench("full fine-tuning", options, steps);
  std::filesystem::remove_all(dir);
  return rc;
}

}  // namespace
}  // namespace lathe::engine

int main(int argc, char** argv) { return lathe::engine::Main(argc, argv); }
