// Small random Llama models for the engine's numerical tests.
#ifndef LATHE_WORKER_ENGINE_MODEL_RANDOM_MODEL_TEST_UTIL_H_
#define LATHE_WORKER_ENGINE_MODEL_RANDOM_MODEL_TEST_UTIL_H_

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine::testing {

// hidden 32, intermediate 48, 2 layers, 4 heads / 2 KV heads of 8, vocab 50.
inline ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 50;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

// Random weights under Hugging Face names (norm weights near 1).
inline TensorMap RandomWeights(const ModelConfig& c) {
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  auto w = [](std::vector<int64_t> shape) { return torch::randn(shape) * 0.3; };
  auto norm = [](int64_t n) { return 1 + 0.1 * torch::randn({n}); };
  TensorMap t;
  t["model.embed_tokens.weight"] = w({c.vocab_size, C});
  t["model.norm.weight"] = norm(C);
  if (!c.tie_word_embeddings) t["lm_head.weight"] = w({c.vocab_size, C});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t[p + "input_layernorm.weight"] = norm(C);
    t[p + "post_attention_layernorm.weight"] = norm(C);
    t[p + "self_attn.q_proj.weight"] = w({q, C});
    t[p + "self_attn.k_proj.weight"] = w({kv, C});
    t[p + "self_attn.v_proj.weight"] = w({kv, C});
    t[p + "self_attn.o_proj.weight"] = w({C, q});
    if (c.qkv_bias) {
      t[p + "self_attn.q_proj.bias"] = w({q});
      t[p + "self_attn.k_proj.bias"] = w({kv});
      t[p + "self_attn.v_proj.bias"] = w({kv});
    }
    t[p + "mlp.gate_proj.weight"] = w({I, C});
    t[p + "mlp.up_proj.weight"] = w({I, C});
    t[p + "mlp.down_proj.weight"] = w({C, I});
  }
  return t;
}

// The tensors a test trains and compares gradients of.
enum class Trainable { kLora, kAll };

// A random model of `c` (seeded), with trainable tensors: LoRA r=4 on all
// seven projections with random (non-zero) B and `lora_dropout`, or every
// weight.
inline std::unique_ptr<LlamaModel> RandomModel(const ModelConfig& c,
                                               Trainable trainable,
                                               double lora_dropout = 0) {
  torch::manual_seed(1);
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::FromTensors(c, RandomWeights(c), "random");
  EXPECT_TRUE(model.ok()) << model.status();
  if (trainable == Trainable::kAll) {
    for (auto& [name, w] : (*model)->Weights(false)) w.requires_grad_(true);
    return std::move(*model);
  }
  LoraSpec lora;
  lora.rank = 4;
  lora.dropout = lora_dropout;
  lora.target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                         "gate_proj", "up_proj", "down_proj"};
  EXPECT_TRUE(AttachLora(**model, lora).ok());
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : LoraParameters(**model)) {
    if (name.find("lora_B") != std::string::npos) t.normal_(0, 0.2);
  }
  return std::move(*model);
}

// The trained tensors of `model` by name.
inline TensorMap TrainedTensors(const LlamaModel& model, Trainable trainable) {
  return trainable == Trainable::kLora ? LoraParameters(model)
                                       : model.Weights(false);
}

// Their gradients (cloned), then zeroes them for the next run.
inline TensorMap TakeGrads(const LlamaModel& model, Trainable trainable) {
  TensorMap grads;
  for (auto& [name, t] : TrainedTensors(model, trainable)) {
    EXPECT_TRUE(t.grad().defined()) << name;
    if (!t.grad().defined()) continue;
    grads[name] = t.grad().clone();
    t.mutable_grad() = torch::Tensor();
  }
  return grads;
}

// Same names and, per tensor, max |a - b| <= rtol max |b| + atol (float32
// sums in another order differ by a few ulps of the tensor's scale, not of
// its smallest element); and not all zero.
inline void ExpectSameGrads(const TensorMap& got, const TensorMap& want,
                            double rtol, double atol) {
  ASSERT_EQ(got.size(), want.size());
  double largest = 0;
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.contains(name)) << name;
    const double scale = w.abs().max().item<double>();
    const double difference = (got.at(name) - w).abs().max().item<double>();
    EXPECT_LE(difference, rtol * scale + atol)
        << name << ": max difference " << difference << ", max " << scale;
    largest = std::max(largest, scale);
  }
  EXPECT_GT(largest, 1e-3);
}

}  // namespace lathe::engine::testing

#endif  // LATHE_WORKER_ENGINE_MODEL_RANDOM_MODEL_TEST_UTIL_H_
