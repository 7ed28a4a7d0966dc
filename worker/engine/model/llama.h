// A Llama-family decoder (Llama 2/3, Mistral, Qwen2) with optional LoRA on
// its projections, computing the same numbers as Hugging Face transformers'
// LlamaForCausalLM: RMSNorm, rotary embeddings (rotate-half, optional
// Llama 3 scaling), grouped-query attention, SwiGLU, tied or separate output
// head. Float32 on the CPU as loaded; Place() moves it to a device and a
// compute dtype (bf16 mixed precision: matrix products in bf16, RMSNorm,
// softmax and the loss in float32).
#ifndef LATHE_WORKER_ENGINE_MODEL_LLAMA_H_
#define LATHE_WORKER_ENGINE_MODEL_LLAMA_H_

#include <torch/torch.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model/attention.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

// y = x W^T + b + scale * dropout(x) A^T B^T; the LoRA part only when
// lora_a is defined. With DoRA (lora_magnitude defined) as PEFT computes it:
// with g = m / ||W + scale B A|| per output row (the norm detached, no
// gradient through it),
//   y = x W^T + (g - 1) * (dropout(x) W^T) + g * scale * dropout(x) A^T B^T +
//   b,
// which is dropout(x)-free x (g W')^T + b for W' = W + scale B A, i.e. the
// weight m W' / ||W'||, when dropout is off. Base weight and bias are
// frozen. Each tensor is used in x's dtype: float32 masters (LoRA's A, B
// and m, full fine-tuning's weights) are cast at use, so their gradients
// arrive in float32.
struct Linear {
  torch::Tensor weight;          // [out, in]
  torch::Tensor bias;            // [out] or undefined
  torch::Tensor lora_a;          // [r, in] or undefined
  torch::Tensor lora_b;          // [out, r]
  torch::Tensor lora_magnitude;  // [out]: DoRA's m, or undefined
  double lora_scale = 0;         // alpha / r (alpha / sqrt(r) for rsLoRA)
  double lora_dropout = 0;       // probability, applied when training
  // S²FT (adapters/s2ft.h): a dense trained update of some whole rows
  // (s2_rows) or columns of the frozen weight, the weight applied being
  // W[idx, :] + delta (delta [k, in]) or W[:, idx] + delta (delta [out, k]):
  // rows add x delta^T into the selected outputs, columns add
  // x[..., idx] delta^T to every output. Undefined = none.
  torch::Tensor s2_index;  // int64 [k], ascending, on the weight's device
  torch::Tensor s2_delta;  // float32
  bool s2_rows = true;

  // `adapter` false: the base projection alone, as if no LoRA were attached.
  // Dropout draws from `generator` (undefined: the default generator of x's
  // device), the same masks as torch::dropout from that generator.
  torch::Tensor Forward(const torch::Tensor& x, bool training,
                        bool adapter = true,
                        const at::Generator& generator = at::Generator()) const;

  // ||W + scale B A|| over the input dimension, per output row: [out]
  // float32, without gradient (PEFT computes it in the input's dtype; this
  // is float32 whatever the compute dtype). REQUIRES: lora_a defined.
  torch::Tensor DoraRowNorm() const;

  // The weight the layer applies: W, W + scale B A (LoRA),
  // m (W + scale B A) / ||W + scale B A|| (DoRA) or W with S²FT's delta
  // added to its rows or columns (in float32, then W's dtype), without
  // gradient.
  torch::Tensor MergedWeight() const;
};

struct DecoderLayer {
  torch::Tensor input_norm;               // [C]
  torch::Tensor post_attention_norm;      // [C]
  Linear q_proj, k_proj, v_proj, o_proj;  // self_attn
  Linear gate_proj, up_proj, down_proj;   // mlp

  // The projection called `name` ("q_proj", ..., "down_proj"), or nullptr.
  Linear* Projection(std::string_view name);
  const Linear* Projection(std::string_view name) const;
};

// The Hugging Face module path of a projection: "self_attn" or "mlp".
std::string_view ProjectionGroup(std::string_view name);

// Where each token of a batch sits: its rotary position and the segment
// (one example, or a row's padding) whose tokens it may attend to.
struct SequenceLayout {
  torch::Tensor position_ids;  // [B, T] int64, 0 at the start of a segment
  // segments[b]: the lengths of row b's segments, in order, summing to T.
  std::vector<std::vector<int64_t>> segments;

  // One example per row followed by its right padding (attention_mask
  // [B, T], 1 on real tokens), positions 0..T-1.
  static SequenceLayout Padded(const torch::Tensor& attention_mask);
};

struct ForwardOptions {
  bool training = false;  // LoRA dropout on
  // Recompute each decoder layer's activations in backward instead of
  // keeping them (see activation_checkpoint.h).
  bool checkpoint_layers = false;
  AttentionKernel attention = DefaultAttentionKernel();
  // false: the base model alone, every adapter bypassed (no copy of the
  // weights): DPO's reference model for a LoRA policy. Prompt tuning's
  // virtual tokens are bypassed too (Hidden's examples then carry no
  // placeholders).
  bool adapters = true;
};

// Thread-compatible. Forward may throw c10::Error; the engine's entry points
// catch it.
class LlamaModel {
 public:
  // Reads config.json and the weights of a Hugging Face model folder.
  // Errors from LoadModelConfig / LoadModelWeights, or FromTensors.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(
      const std::string& model_dir);

  // Builds the model from Hugging Face-named float32 tensors
  // ("model.layers.0.self_attn.q_proj.weight", ...). INVALID_ARGUMENT naming
  // the tensor when one is missing or has the wrong shape; `source` names
  // the weights in errors.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> FromTensors(
      const ModelConfig& config, TensorMap tensors, const std::string& source);

  // input_ids: [B, T] int64; attention_mask: [B, T], 1 for real tokens,
  // 0 for right padding. Returns logits [B, T, V] float32. `training`
  // enables LoRA dropout.
  torch::Tensor Forward(const torch::Tensor& input_ids,
                        const torch::Tensor& attention_mask,
                        bool training) const;

  // The final hidden states [B, T, C] (after the last norm), whose product
  // with head() gives the logits. REQUIRES: layout fits input_ids [B, T].
  torch::Tensor Hidden(const torch::Tensor& input_ids,
                       const SequenceLayout& layout,
                       const ForwardOptions& options) const;

  // The output head [V, C]: the embedding when tied.
  const torch::Tensor& head() const { return lm_head_; }

  // The model's weights under their Hugging Face names ("lm_head.weight"
  // only when not tied). With `merge_lora` false they share storage with
  // the model (so requires_grad_ on them makes them trainable); with it true
  // each adapted projection's weight is a new Linear::MergedWeight().
  TensorMap Weights(bool merge_lora) const;

  // Prompt tuning's virtual tokens (adapters/prompt_tuning.h): [N, C]
  // float32, or undefined (none). While set (and ForwardOptions::adapters),
  // Hidden embeds every position
  // whose position id is below N as row position_id of these instead of its
  // token, so each example (each segment, its positions restarting at 0)
  // must start with N placeholder tokens; Forward prepends them itself and
  // returns the logits of the real tokens only (PEFT's logits[:, N:]).
  void SetPromptEmbeddings(torch::Tensor embeddings) {
    prompt_embeddings_ = std::move(embeddings);
  }
  const torch::Tensor& prompt_embeddings() const { return prompt_embeddings_; }
  int64_t num_virtual_tokens() const {
    return prompt_embeddings_.defined() ? prompt_embeddings_.size(0) : 0;
  }

  // Moves every weight to `device`, stored in `storage` (bf16 for a frozen
  // base under LoRA; float32 masters for full fine-tuning), and computes in
  // `compute` from then on. Call before attaching an adapter: its tensors
  // are made on the base's device, in float32.
  void Place(torch::Device device, torch::ScalarType storage,
             torch::ScalarType compute);
  torch::Device device() const { return embed_tokens_.device(); }
  torch::ScalarType compute_dtype() const { return compute_dtype_; }

  // The generator the model's dropout draws from (undefined: the default
  // generator of its device). A training run gives its model one of its
  // own (SetUpModel), so that runs in one process draw independently; its
  // state is what a checkpoint keeps and a resume restores.
  void SetGenerator(at::Generator generator) {
    generator_ = std::move(generator);
  }
  const at::Generator& generator() const { return generator_; }

  const ModelConfig& config() const { return config_; }
  std::vector<DecoderLayer>& layers() { return layers_; }
  const std::vector<DecoderLayer>& layers() const { return layers_; }

 private:
  explicit LlamaModel(const ModelConfig& config) : config_(config) {}

  // One decoder layer: x + attention, then + MLP. cos, sin: [B, 1, T, D].
  torch::Tensor Layer(const DecoderLayer& layer, const torch::Tensor& x,
                      const torch::Tensor& cos, const torch::Tensor& sin,
                      const SequenceLayout& layout,
                      const ForwardOptions& options) const;
  torch::Tensor Attention(const DecoderLayer& layer, const torch::Tensor& x,
                          const torch::Tensor& cos, const torch::Tensor& sin,
                          const SequenceLayout& layout,
                          const ForwardOptions& options) const;

  ModelConfig config_;
  torch::Tensor embed_tokens_;  // [V, C]
  torch::Tensor norm_;          // [C]
  torch::Tensor lm_head_;       // [V, C], the embedding when tied
  torch::Tensor inv_freq_;      // [D / 2], float32
  torch::Tensor prompt_embeddings_;  // [N, C] float32 or undefined
  torch::ScalarType compute_dtype_ = torch::kFloat32;
  at::Generator generator_;
  std::vector<DecoderLayer> layers_;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_LLAMA_H_
