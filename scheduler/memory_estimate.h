// How much device memory a training job needs, estimated from the shape of
// the model and of the training run. The scheduler places a job only on a
// worker whose device has at least this much memory.
#ifndef LATHE_SCHEDULER_MEMORY_ESTIMATE_H_
#define LATHE_SCHEDULER_MEMORY_ESTIMATE_H_

#include <cstdint>
#include <optional>

namespace lathe::scheduler {

// The base model, as its config.json describes it (Llama-3-8B values).
struct ModelShape {
  int64_t parameters = 0;        // 8'030'261'248
  int64_t hidden_size = 0;       // 4096
  int64_t num_layers = 0;        // 32
  int64_t vocab_size = 0;        // 128'256
  int64_t bytes_per_weight = 2;  // 2 for bf16/fp16, 4 for fp32
  // A decoder layer's shapes, for a TrainedPart; 0 = unknown.
  int64_t intermediate_size = 0;  // 14336: gate/up_proj's outputs
  int64_t attention_size = 0;     // 4096: q_proj's outputs (heads x head_dim)
  int64_t kv_size = 0;            // 1024: k/v_proj's (kv heads x head_dim)
  bool tied_embeddings = false;   // the head is the embeddings (no lm_head)
};

enum class TrainMethod { kLora, kFull };

// What a full fine-tuning with a trainable selection (LISA, HFT, CoFiTune)
// gives gradients and optimizer state: at any one time, the largest set its
// draws can make. Matrix counts are summed over the layers.
struct TrainedPart {
  bool ends = false;         // embeddings, final norm and head (LISA: true)
  int64_t whole_layers = 0;  // decoder layers trained whole (LISA: gamma)
  int64_t q_o_matrices = 0;  // q_proj, o_proj: hidden x attention_size each
  int64_t k_v_matrices = 0;  // k_proj, v_proj: hidden x kv_size each
  int64_t mlp_matrices = 0;  // gate, up, down: hidden x intermediate_size
  int64_t norms = 0;         // layer norms: hidden each
};

struct TrainShape {
  TrainMethod method = TrainMethod::kLora;
  int64_t lora_rank = 16;               // kLora only
  int64_t lora_matrices_per_layer = 4;  // kLora only: q, k, v, o
  int64_t batch_size = 1;               // sequences per optimizer micro-step
  int64_t sequence_length = 2048;       // tokens per sequence
  // kFull only: the part trained; none = every parameter.
  std::optional<TrainedPart> part;
};

// Trainable parameters. For kFull, every parameter, or with a part (and the
// model's layer shapes known; every parameter otherwise), at most the
// model's parameters of
//   ends          vocab * hidden * (tied ? 1 : 2) + hidden
//   whole_layers  (parameters - ends) / layers each (norms and biases in)
//   q_o_matrices  hidden * attention_size each
//   k_v_matrices  hidden * kv_size each
//   mlp_matrices  hidden * intermediate_size each
//   norms         hidden each
// (a single matrix's bias, Qwen2's q/k/v ones, is left out: under 0.1 % of
// it). For kLora, r * (d_in + d_out) per adapted matrix, each matrix taken
// as hidden x hidden:
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
// The weights are the whole model's whatever is trained: a part lowers
// only the optimizer term.
//
// Monotone: growing any numeric field of either shape never lowers the
// estimate, and kFull without a part never needs less than kLora while the
// adapter has fewer parameters than the model.
// REQUIRES: every field >= 0.
int64_t EstimateMemoryBytes(const ModelShape& model, const TrainShape& train);

// The part of EstimateMemoryBytes that is the frozen base model's weights,
// which LoRA jobs on the same base running in one process share: one copy
// serves them all. For kLora the weights term, parameters *
// bytes_per_weight; for kFull 0 (it trains, so owns, its copy, a part
// included). A job run beside others on the same base costs only
// EstimateMemoryBytes - SharedBaseBytes more; the base is counted once.
// Only the weights are shared: each job keeps its own overhead term.
// REQUIRES: as EstimateMemoryBytes.
int64_t SharedBaseBytes(const ModelShape& model, const TrainShape& train);

// The fixed part of EstimateMemoryBytes.
inline constexpr int64_t kMemoryOverheadBytes = int64_t{1} << 30;

}  // namespace lathe::scheduler

#endif  // LATHE_SCHEDULER_MEMORY_ESTIMATE_H_
