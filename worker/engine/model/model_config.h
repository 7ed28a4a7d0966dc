// The architecture of a Llama-family decoder, read from a Hugging Face
// config.json (Llama 2/3, Mistral, Qwen2). Torch-free.
#ifndef LATHE_WORKER_ENGINE_MODEL_MODEL_CONFIG_H_
#define LATHE_WORKER_ENGINE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace lathe::engine {

// The seven projections of a decoder layer, in Hugging Face's names and
// order: attention (self_attn), then the MLP (mlp). LoRA adapts any of them.
inline constexpr const char* kProjectionNames[] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
    "down_proj"};

// Llama 3 "rope_scaling": {"rope_type": "llama3", ...}; factor 0 = none.
struct RopeScaling {
  double factor = 0;                  // 32.0
  double low_freq_factor = 1;         // 1.0
  double high_freq_factor = 4;        // 4.0
  int64_t original_max_position = 0;  // 8192
};

struct ModelConfig {
  std::string model_type;           // "llama", "mistral" or "qwen2"
  int64_t hidden_size = 0;          // C, 64
  int64_t intermediate_size = 0;    // 160
  int64_t num_hidden_layers = 0;    // 2
  int64_t num_attention_heads = 0;  // H, 4
  int64_t num_key_value_heads = 0;  // KV, 2 (defaults to H)
  int64_t head_dim = 0;             // D, 16 (defaults to C / H)
  int64_t vocab_size = 0;           // V, 32000
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // attention_bias, or always for qwen2
  bool o_bias = false;    // attention_bias for llama/mistral
  // The model's Hugging Face Hub id ("TinyLlama/TinyLlama-1.1B-Chat-v1.0"):
  // "_name_or_path", which transformers wrote into config.json before it
  // started leaving it out, when that is an "owner/name" id; "" when absent
  // or a local path (what it holds for a model loaded from a folder).
  std::string hub_name;
};

// Parses a config.json document. `source` names the file in errors.
// INVALID_ARGUMENT naming the field when one is missing, has the wrong type,
// is out of range or asks for something unsupported (an unknown
// architecture, mlp_bias, an unknown rope_scaling type).
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& config,
                                             const std::string& source);

// Reads and parses `model_dir`/config.json (NOT_FOUND when absent).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_MODEL_CONFIG_H_
