// The training engine's entry point: one LoRA fine-tuning run, read top to
// bottom as a recipe (setup -> for each step: batch, forward, loss, backward,
// clip, optimizer step, schedule, log -> export).
//
// The engine never includes gRPC headers and never lets an exception escape:
// every c10::Error / std::exception is caught here and returned as a Status.
#ifndef LATHE_WORKER_ENGINE_TRAINER_H_
#define LATHE_WORKER_ENGINE_TRAINER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lathe::engine {

struct LoraOptions {
  int rank = 8;          // r
  double alpha = 16.0;   // lora_alpha; scale = alpha / rank
  double dropout = 0.0;  // lora_dropout
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj",
                                             "o_proj"};
};

struct TrainOptions {
  std::string model_dir;        // Hugging Face folder: config.json,
                                // model.safetensors, tokenizer
  std::string base_model_name;  // written as base_model_name_or_path
  std::string training_file;    // chat JSONL
  std::string validation_file;  // optional chat JSONL ("" = none)
  std::string output_dir;       // the PEFT adapter is written here
  int n_epochs = 3;
  int batch_size = 4;
  double learning_rate = 2e-4;  // peak, after warmup
  int warmup_steps = 0;         // then linear decay to 0
  double max_grad_norm = 1.0;
  int max_seq_len = 512;
  uint64_t seed = 42;
  LoraOptions lora;
};

// Figures for one optimizer step (a metrics event on the server).
struct StepMetrics {
  int64_t step = 0;  // 1-based
  int64_t total_steps = 0;
  double loss = 0;               // mean over trainable tokens of this step
  double token_accuracy = 0;     // argmax == label over trainable tokens
  double learning_rate = 0;      // used for this step
  double grad_norm = 0;          // total LoRA gradient norm before clipping
  double tokens_per_second = 0;  // all tokens of the step / step wall time
  int64_t trained_tokens = 0;    // cumulative tokens processed so far
};

struct TrainResult {
  int64_t steps = 0;
  int64_t trained_tokens = 0;
  int64_t truncated_examples = 0;  // training conversations cut to max_seq_len
  double first_loss = 0;
  double last_loss = 0;
  // Mean loss over the trainable tokens of validation_file after training;
  // empty when there is none.
  std::optional<double> validation_loss;
};

// Called after each step, from the training thread.
using StepCallback = std::function<void(const StepMetrics&)>;
// Polled before each step; returning true ends the run with CANCELLED.
using StopCheck = std::function<bool()>;

// Trains a LoRA adapter and writes it to options.output_dir in the Hugging
// Face PEFT layout (adapter_config.json, adapter_model.safetensors).
// Errors: INVALID_ARGUMENT for bad options or data (naming the field or the
// line), NOT_FOUND / DATA_LOSS for unreadable model files, CANCELLED when
// `should_stop` asked to stop, INTERNAL for LibTorch failures.
absl::StatusOr<TrainResult> Train(const TrainOptions& options,
                                  const StepCallback& on_step,
                                  const StopCheck& should_stop);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TRAINER_H_
