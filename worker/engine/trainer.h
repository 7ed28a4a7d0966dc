// The training engine's entry point: one fine-tuning run (LoRA or full),
// read top to bottom as a recipe (setup or resume -> for each step: batch,
// forward, loss, backward, clip, optimizer step, schedule, log, eval,
// checkpoint -> export).
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
  int rank = 8;             // r
  double alpha = 16.0;      // lora_alpha; scale = alpha / rank
  double dropout = 0.0;     // lora_dropout
  bool use_rslora = false;  // scale = alpha / sqrt(rank) instead
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj",
                                             "o_proj"};
};

struct TrainOptions {
  std::string model_dir;  // Hugging Face folder: config.json,
                          // model.safetensors, tokenizer
  // adapter_config.json's base_model_name_or_path when config.json names
  // no Hugging Face model (ModelConfig::hub_name); "" = model_dir.
  std::string base_model_name;
  std::string training_file;    // chat JSONL
  std::string validation_file;  // optional chat JSONL ("" = none)
  // What errors call the two files ("" = their paths): a worker gives the
  // job's file ids ("training_file file-abc"), so that no path of its own
  // reaches the job's owner.
  std::string training_file_name;
  std::string validation_file_name;
  // "lora": a PEFT adapter is written to output_dir. "full": every weight
  // is trained and output_dir receives a model folder in model_dir's layout
  // (config and tokenizer files copied, model.safetensors in its dtype).
  std::string method = "lora";
  // Chat template family ("zephyr", "llama3", "chatml", "mistral"); ""
  // recognizes it from tokenizer_config.json's chat_template.
  std::string chat_template;
  std::string output_dir;
  // LoRA only: also write the merged model folder here ("" = none).
  std::string merge_output_dir;
  int n_epochs = 3;
  int batch_size = 4;                   // examples per micro-batch
  int gradient_accumulation_steps = 1;  // micro-batches per optimizer step
  double learning_rate = 2e-4;          // peak, after warmup
  int warmup_steps = 0;                 // linear from 0 to the peak
  std::string lr_scheduler = "linear";  // then: linear, cosine or constant
  double weight_decay = 0.0;  // AdamW's, on LoRA A/B or, for full, on the
                              // matrices (not norms, biases)
  double max_grad_norm = 1.0;
  int max_seq_len = 512;
  uint64_t seed = 42;
  int eval_every = 0;  // steps between validation passes (0 = only at end)
  int checkpoint_every = 0;    // steps (0 = only on request)
  std::string checkpoint_dir;  // checkpoints go to <checkpoint_dir>/step-<N>
  std::string resume_from;     // a checkpoint folder ("" = fresh start)
  // Each micro-batch's examples end to end in one row, with per-example
  // attention and positions, instead of one padded row each (see
  // data/packing.h): the same loss, no padding computed.
  bool packing = true;
  // Recompute each decoder layer's activations in backward instead of
  // keeping them: less memory, about a third more compute.
  bool activation_checkpointing = false;
  // Target positions per chunk of the output head + cross-entropy; the loss
  // path holds at most loss_chunk_tokens x vocab_size float32 logits.
  int loss_chunk_tokens = 1024;
  LoraOptions lora;
};

// Figures for one optimizer step (a metrics event on the server).
struct StepMetrics {
  int64_t step = 0;  // 1-based
  int64_t total_steps = 0;
  double loss = 0;               // mean over trainable tokens of this step
  double token_accuracy = 0;     // argmax == label over trainable tokens
  double learning_rate = 0;      // used for this step
  double grad_norm = 0;          // total gradient norm before clipping
  double tokens_per_second = 0;  // all tokens of the step / step wall time
  int64_t trained_tokens = 0;    // cumulative tokens processed so far
  // Set on the steps where a validation pass ran (every eval_every steps
  // and the last step, when there is a validation_file): mean loss and
  // token accuracy over its trainable tokens after this step's update.
  std::optional<double> validation_loss;
  std::optional<double> validation_accuracy;
};

struct TrainResult {
  int64_t steps = 0;
  int64_t trained_tokens = 0;
  int64_t truncated_examples = 0;  // training conversations cut to max_seq_len
  // Pad positions the training steps of this run computed (trained_tokens
  // counts the real ones); near 0 with packing.
  int64_t padding_tokens = 0;
  // The largest logits block the loss path held in this run, in bytes.
  int64_t loss_peak_bytes = 0;
  double first_loss = 0;
  double last_loss = 0;
  // Mean loss over the trainable tokens of validation_file after training;
  // empty when there is none.
  std::optional<double> validation_loss;
};

enum class StopRequest { kNone, kCancel, kCheckpointAndStop };

// A complete checkpoint folder.
struct CheckpointInfo {
  int64_t step = 0;
  std::string dir;                 // <checkpoint_dir>/step-<step>
  std::vector<std::string> files;  // names inside dir, sorted
  StepMetrics metrics;  // of that step; only step and total_steps are set
                        // when this run trained no step before it
  std::optional<double> validation_loss;  // of that step, when one ran
};

// Callbacks from the training thread; each may be empty.
struct TrainHooks {
  std::function<void(const StepMetrics&)> on_step;  // after each step
  std::function<StopRequest()> should_stop;         // before each step
  // After a checkpoint folder is complete (renamed into place).
  std::function<void(const CheckpointInfo&)> on_checkpoint;
};

// Trains and writes the result to options.output_dir: a PEFT adapter
// (adapter_config.json, adapter_model.safetensors) for "lora", a model
// folder for "full"; plus the merged model to merge_output_dir when set.
//
// Checkpoints (folder layout in checkpoint.h) are written every
// checkpoint_every steps and when should_stop asks for kCheckpointAndStop.
// With resume_from set, the run continues from that checkpoint exactly as
// the uninterrupted run would have (same weights, losses, data order and
// dropout masks).
//
// Every error carries its kind (error_kind.h: user data with the file's
// field, user options with the setting's API name, the base model, or the
// platform). Codes: INVALID_ARGUMENT for bad options or data (naming the
// field, or the file by its *_file_name and the line),
// NOT_FOUND / DATA_LOSS for unreadable model or checkpoint files,
// FAILED_PRECONDITION when resume_from was written with different options
// (naming the option) or a checkpoint is requested without checkpoint_dir,
// CANCELLED after kCancel, ABORTED ("stopped at step N after checkpointing")
// after kCheckpointAndStop, OUT_OF_RANGE ("nan_loss: …" naming the step) when
// the loss stops being finite, RESOURCE_EXHAUSTED ("out_of_memory: …") when
// the device runs out of memory, INTERNAL for other LibTorch and I/O
// failures.
absl::StatusOr<TrainResult> Train(const TrainOptions& options,
                                  const TrainHooks& hooks);


}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TRAINER_H_
