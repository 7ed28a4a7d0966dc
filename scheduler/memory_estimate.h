// How much device memory a training job needs, estimated from the shape of
// the model and of the training run. The scheduler places a job only on a
// worker whose device has at least this much memory.
#ifndef LATHE_SCHEDULER_MEMORY_ESTIMATE_H_
#define LATHE_SCHEDULER_MEMORY_ESTIMATE_H_

#include <cstdint>

namespace lathe::scheduler {

// The base model, as its config.json describes it (Llama-3-8B values).
struct ModelShape {
  int64_t parameters = 0;        // 8'030'261'248
  int64_t hidden_size = 0;       // 4096
  int64_t num_layers = 0;        // 32
  int64_t vocab_size = 0;        // 128'256
  int64_t bytes_per_weight = 2;  // 2 for bf16/fp16, 4 for fp32
};

enum class TrainMethod { kLora, kFull };

struct TrainShape {
  TrainMethod method = TrainMethod::kLora;
  int64_t lora_rank = 16;               // kLora only
  int64_t lora_matrices_per_layer = 4;  // kLora only: q, k, v, o
  int64_t batch_size = 1;               // sequences per optimizer micro-step
  int64_t sequence_length = 2048;       // tokens per sequence
};

// Trainable parameters: every parameter for kFull; for kLora, r * (d_in +
// d_out) per adapted matrix, each matrix taken as hidden x hidden:
//   2 * rank * hidden * matrices_per_layer * layers.
int64_t TrainableParameters(const ModelShape& model, const TrainShape& train);

// Bytes of device memory the job needs, a deliberately conservative sum:
//
//   weights      parameters * bytes_per_weight
//   optimizer    trainable * 16   (fp32 master copy, fp32 gradient, Adam's
//                                  two fp32 moments: 4 bytes each)
//   activations  batch * seq * hidden * layers * 17 * bytes_per_weight
//                (the ~34 bytes per token, hidden unit and layer that a
//                transformer layer keeps for backward in 16-bit precision
//                with fused attention and no activation checkpointing)
//   logits       batch * seq * vocab * 4 * 2   (fp32 logits and their
//                                               gradient)
//   overhead     1 GiB   (CUDA context, kernels' workspaces, allocator slack)
//
// Monotone: growing any numeric field of either shape never lowers the
// estimate, and kFull never needs less than kLora while the adapter has
// fewer parameters than the model.
// REQUIRES: every field >= 0.
int64_t EstimateMemoryBytes(const ModelShape& model, const TrainShape& train);

// The fixed part of EstimateMemoryBytes.
inline constexpr int64_t kMemoryOverheadBytes = int64_t{1} << 30;

}  // namespace lathe::scheduler

#endif  // LATHE_SCHEDULER_MEMORY_ESTIMATE_H_
