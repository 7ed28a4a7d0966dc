#include "worker/engine/model/llama.h"

#include <cmath>
#include <fstream>

#include "gtest/gtest.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/model/random_model_test_util.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/tokenizer.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {
namespace {

using torch::indexing::Slice;

using testing::RandomWeights;
using testing::TinyConfig;

// An independent float64 forward pass for one unpadded sequence, written
// from the Llama paper / HF modeling code with plain ops: per-head loops,
// rotation of (x_i, x_{i+D/2}) pairs, explicit causal loop.
torch::Tensor ReferenceForward(const ModelConfig& c, const TensorMap& weights,
                               const std::vector<int64_t>& ids) {
  auto W = [&](const std::string& name) {
    return weights.at(name).to(torch::kFloat64);
  };
  auto has = [&](const std::string& name) { return weights.count(name) > 0; };
  auto rms = [&](torch::Tensor x, const std::string& name) {
    return x / torch::sqrt(x.pow(2).mean(-1, true) + c.rms_norm_eps) * W(name);
  };
  const int64_t T = static_cast<int64_t>(ids.size()), D = c.head_dim;
  const int64_t group = c.num_attention_heads / c.num_key_value_heads;
  torch::Tensor x = W("model.embed_tokens.weight")
                        .index_select(0, torch::tensor(ids, torch::kInt64));
  // Rotation angles: position t, pair i -> t / theta^(2i/D), with Llama 3
  // scaling of long wavelengths when configured.
  torch::Tensor angle = torch::zeros({T, D / 2}, torch::kFloat64);
  for (int64_t i = 0; i < D / 2; ++i) {
    double freq = 1.0 / std::pow(c.rope_theta, 2.0 * i / D);
    const RopeScaling& s = c.rope_scaling;
    if (s.factor > 0) {
      const double wavelen = 2 * M_PI / freq;
      const double old_len = static_cast<double>(s.original_max_position);
      if (wavelen > old_len / s.low_freq_factor) {
        freq /= s.factor;
      } else if (wavelen >= old_len / s.high_freq_factor) {
        const double smooth = (old_len / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        freq = (1 - smooth) * freq / s.factor + smooth * freq;
      }
    }
    for (int64_t t = 0; t < T; ++t) angle[t][i] = t * freq;
  }
  auto rotate = [&](torch::Tensor v) {  // v: [T, D]
    torch::Tensor a = v.index({Slice(), Slice(0, D / 2)});
    torch::Tensor b = v.index({Slice(), Slice(D / 2, D)});
    return torch::cat(
        {a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()},
        1);
  };
  auto linear = [&](torch::Tensor in, const std::string& name) {
    torch::Tensor y = torch::matmul(in, W(name + ".weight").t());
    if (has(name + ".bias")) y = y + W(name + ".bias");
    return y;
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    torch::Tensor h = rms(x, p + "input_layernorm.weight");
    torch::Tensor q = linear(h, p + "self_attn.q_proj");
    torch::Tensor k = linear(h, p + "self_attn.k_proj");
    torch::Tensor v = linear(h, p + "self_attn.v_proj");
    std::vector<torch::Tensor> heads;
    for (int64_t head = 0; head < c.num_attention_heads; ++head) {
      const int64_t kv = head / group;
      torch::Tensor qh =
          rotate(q.index({Slice(), Slice(head * D, (head + 1) * D)}));
      torch::Tensor kh =
          rotate(k.index({Slice(), Slice(kv * D, (kv + 1) * D)}));
      torch::Tensor vh = v.index({Slice(), Slice(kv * D, (kv + 1) * D)});
      torch::Tensor out = torch::zeros({T, D}, torch::kFloat64);
      for (int64_t t = 0; t < T; ++t) {
        torch::Tensor scores =
            torch::matmul(kh.index({Slice(0, t + 1)}), qh[t]) / std::sqrt(D);
        out[t] = torch::matmul(torch::softmax(scores, 0),
                               vh.index({Slice(0, t + 1)}));
      }
      heads.push_back(out);
    }
    x = x + linear(torch::cat(heads, 1), p + "self_attn.o_proj");
    h = rms(x, p + "post_attention_layernorm.weight");
    torch::Tensor gate = linear(h, p + "mlp.gate_proj");
    x = x + linear(gate * torch::sigmoid(gate) * linear(h, p + "mlp.up_proj"),
                   p + "mlp.down_proj");
  }
  x = rms(x, "model.norm.weight");
  return torch::matmul(x, W(c.tie_word_embeddings ? "model.embed_tokens.weight"
                                                  : "lm_head.weight")
                              .t());
}

// Engine logits for a right-padded batch of two sequences vs the reference.
void ExpectMatchesReference(const ModelConfig& c) {
  torch::manual_seed(0);
  TensorMap weights = RandomWeights(c);
  TensorMap copy;
  for (const auto& [name, t] : weights) copy[name] = t.clone();
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::FromTensors(c, std::move(copy), "random");
  ASSERT_TRUE(model.ok()) << model.status();

  const std::vector<std::vector<int64_t>> seqs = {{3, 14, 15, 9, 26, 5, 35},
                                                  {8, 9, 7, 9, 3}};
  torch::Tensor ids = torch::zeros({2, 7}, torch::kInt64);
  torch::Tensor mask = torch::zeros({2, 7}, torch::kInt64);
  for (int b = 0; b < 2; ++b) {
    for (size_t t = 0; t < seqs[b].size(); ++t) {
      ids[b][t] = seqs[b][t];
      mask[b][t] = 1;
    }
  }
  torch::Tensor logits = (*model)->Forward(ids, mask, /*training=*/false);
  ASSERT_EQ(logits.sizes().vec(), (std::vector<int64_t>{2, 7, c.vocab_size}));
  for (int b = 0; b < 2; ++b) {
    const auto n = static_cast<int64_t>(seqs[b].size());
    torch::Tensor expected = ReferenceForward(c, weights, seqs[b]);
    torch::Tensor got = logits[b].index({Slice(0, n)}).to(torch::kFloat64);
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4)
        << "sequence " << b;
    EXPECT_GT(expected.abs().max().item<double>(), 0.1);  // not trivially zero
  }
}

TEST(LlamaTest, MatchesReferenceForwardWithGqaAndPadding) {
  ExpectMatchesReference(TinyConfig());
}

TEST(LlamaTest, MatchesReferenceWithTiedHeadAndBias) {
  ModelConfig c = TinyConfig();
  c.tie_word_embeddings = true;
  c.qkv_bias = true;
  c.num_key_value_heads = 4;
  ExpectMatchesReference(c);
}

TEST(LlamaTest, MatchesReferenceWithLlama3RopeScaling) {
  ModelConfig c = TinyConfig();
  c.rope_theta = 500000.0;
  c.rope_scaling = {.factor = 8.0,
                    .low_freq_factor = 1.0,
                    .high_freq_factor = 4.0,
                    .original_max_position = 256};
  ExpectMatchesReference(c);
}

TEST(LlamaTest, MatchesReferenceWithHeadDimApartFromHiddenOverHeads) {
  // As Qwen-style configs allow: heads * head_dim (4 * 16) != hidden (32).
  ModelConfig c = TinyConfig();
  c.head_dim = 16;
  ExpectMatchesReference(c);
}

TEST(LlamaTest, NamesMissingAndMisshapenTensors) {
  const ModelConfig c = TinyConfig();
  TensorMap weights = RandomWeights(c);
  weights.erase("model.layers.1.mlp.up_proj.weight");
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::FromTensors(c, weights, "w.safetensors");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find(
                "w.safetensors: tensor \"model.layers.1.mlp.up_proj.weight\" "
                "is missing"),
            std::string::npos)
      << model.status();

  weights = RandomWeights(c);
  weights["model.layers.0.self_attn.k_proj.weight"] = torch::zeros({32, 32});
  model = LlamaModel::FromTensors(c, weights, "w.safetensors");
  EXPECT_NE(
      model.status().message().find(
          "\"model.layers.0.self_attn.k_proj.weight\" has shape [32, 32], "
          "expected [16, 32]"),
      std::string::npos)
      << model.status();
}

TEST(LoraTest, LinearAddsScaledLowRankUpdate) {
  torch::manual_seed(1);
  Linear linear;
  linear.weight = torch::randn({6, 5});
  linear.lora_a = torch::randn({2, 5});
  linear.lora_b = torch::randn({6, 2});
  linear.lora_scale = 4.0;
  torch::Tensor x = torch::randn({3, 5});
  torch::Tensor expected =
      torch::matmul(x, linear.weight.t()) +
      4.0 *
          torch::matmul(torch::matmul(x, linear.lora_a.t()), linear.lora_b.t());
  EXPECT_TRUE(torch::allclose(linear.Forward(x, false), expected, 1e-5, 1e-5));
}

TEST(LoraTest, AttachInitializesLikePeftAndSaveLoadRoundTrips) {
  const ModelConfig c = TinyConfig();
  torch::manual_seed(2);
  const TensorMap weights = RandomWeights(c);
  auto make_model = [&] {
    return *LlamaModel::FromTensors(c, weights, "random");
  };
  std::unique_ptr<LlamaModel> model = make_model();
  LoraSpec options;
  options.rank = 4;
  options.alpha = 8;
  options.target_modules = {"q_proj", "v_proj", "down_proj"};
  ASSERT_TRUE(AttachLora(*model, options).ok());
  const Linear& q = model->layers()[0].q_proj;
  EXPECT_EQ(q.lora_a.sizes().vec(), (std::vector<int64_t>{4, 32}));
  EXPECT_LE(q.lora_a.abs().max().item<double>(), 1 / std::sqrt(32.0));
  EXPECT_GT(q.lora_a.abs().max().item<double>(), 0.5 / std::sqrt(32.0));
  EXPECT_EQ(q.lora_b.abs().sum().item<double>(), 0);
  EXPECT_DOUBLE_EQ(q.lora_scale, 2.0);
  EXPECT_FALSE(model->layers()[0].k_proj.lora_a.defined());
  EXPECT_EQ(LoraParameters(*model).size(), 2u * 3 * 2);
  EXPECT_EQ(
      AttachLora(*model, LoraSpec{.rank = 4, .target_modules = {"x_proj"}})
          .code(),
      absl::StatusCode::kInvalidArgument);

  // Non-zero B so the adapter changes the logits.
  for (auto& [name, p] : LoraParameters(*model)) {
    torch::NoGradGuard no_grad;
    p.normal_(0, 0.5);
  }
  testing::TempDir dir;
  ASSERT_TRUE(SaveAdapter(*model, options, "tiny", dir.path()).ok());
  std::unique_ptr<LlamaModel> loaded = make_model();
  absl::StatusOr<LoraSpec> read = LoadAdapter(*loaded, dir.path());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->target_modules, options.target_modules);
  torch::Tensor ids = torch::tensor({{1, 2, 3, 4}}, torch::kInt64);
  torch::Tensor mask = torch::ones({1, 4}, torch::kInt64);
  torch::NoGradGuard no_grad;
  torch::Tensor adapted = model->Forward(ids, mask, false);
  EXPECT_TRUE(torch::allclose(loaded->Forward(ids, mask, false), adapted));
  EXPECT_FALSE(
      torch::allclose(make_model()->Forward(ids, mask, false), adapted));
}

TEST(LoraTest, LoadAdapterNamesMissingTensorsAndLeavesModelUntouched) {
  const ModelConfig c = TinyConfig();
  torch::manual_seed(3);
  const TensorMap weights = RandomWeights(c);
  std::unique_ptr<LlamaModel> model = *LlamaModel::FromTensors(c, weights, "w");
  LoraSpec options;
  options.rank = 2;
  options.target_modules = {"q_proj"};
  ASSERT_TRUE(AttachLora(*model, options).ok());
  testing::TempDir dir;
  ASSERT_TRUE(SaveAdapter(*model, options, "tiny", dir.path()).ok());
  // The config now asks for v_proj too, which the weights lack.
  std::ofstream(dir.path() + "/adapter_config.json")
      << R"({"peft_type":"LORA","r":2,"lora_alpha":4,)"
         R"("target_modules":["q_proj","v_proj"]})";
  std::unique_ptr<LlamaModel> fresh = *LlamaModel::FromTensors(c, weights, "w");
  absl::StatusOr<LoraSpec> loaded = LoadAdapter(*fresh, dir.path());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find(
                "\"base_model.model.model.layers.0.self_attn.v_proj.lora_A."
                "weight\" is missing"),
            std::string::npos)
      << loaded.status();
  EXPECT_FALSE(fresh->layers()[0].q_proj.lora_a.defined());

  std::ofstream(dir.path() + "/adapter_config.json")
      << R"({"peft_type":"LORA","r":2,"lora_alpha":4,"use_dora":true,)"
         R"("target_modules":["q_proj"]})";
  loaded = LoadAdapter(*fresh, dir.path());
  // A DoRA adapter needs its magnitudes.
  EXPECT_NE(loaded.status().message().find(
                "q_proj.lora_magnitude_vector\" is missing"),
            std::string::npos)
      << loaded.status();
  EXPECT_FALSE(fresh->layers()[0].q_proj.lora_a.defined());
}

class FixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fixture_ = testing::TinyLlamaFixture();
    LATHE_SKIP_WITHOUT_FIXTURES(fixture_);
    absl::StatusOr<std::unique_ptr<LlamaModel>> model =
        LlamaModel::Load(fixture_ + "/model");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
  }

  // Max |engine - reference| of conversation 0's logits.
  double MaxLogitError(const std::string& reference_file) {
    absl::StatusOr<TensorMap> reference =
        LoadSafetensors(fixture_ + "/" + reference_file);
    EXPECT_TRUE(reference.ok()) << reference.status();
    if (!reference.ok()) return 1e9;
    const torch::Tensor& expected = reference->at("logits");
    // Conversation 0's input_ids, from expected.jsonl.
    const std::vector<int64_t> ids = {
        529,   29989, 5205,  29989, 29958, 13,    3492,  526,   1935,  344,
        29889, 2,     29871, 13,    29966, 29989, 1792,  29989, 29958, 13,
        29906, 29974, 29906, 29973, 2,     29871, 13,    29966, 29989, 465,
        22137, 29989, 29958, 13,    29946, 2,     29871, 13};
    torch::NoGradGuard no_grad;
    const auto T = static_cast<int64_t>(ids.size());
    torch::Tensor logits =
        model_->Forward(torch::tensor(ids, torch::kInt64).view({1, T}),
                        torch::ones({1, T}, torch::kInt64), false);
    EXPECT_EQ(logits.sizes(), expected.sizes());
    return (logits - expected).abs().max().item<double>();
  }

  std::string fixture_;
  std::unique_ptr<LlamaModel> model_;
};

TEST_F(FixtureTest, BaseLogitsMatchTransformers) {
  EXPECT_LT(MaxLogitError("logits0.safetensors"), 1e-4);
}

TEST_F(FixtureTest, LoraLogitsMatchPeft) {
  // The adapter matters: base logits are far from the LoRA reference.
  EXPECT_GT(MaxLogitError("lora_logits0.safetensors"), 1e-3);
  absl::StatusOr<LoraSpec> options =
      LoadAdapter(*model_, fixture_ + "/adapter_ref");
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->rank, 4);
  EXPECT_LT(MaxLogitError("lora_logits0.safetensors"), 1e-4);
}

TEST_F(FixtureTest, PeftAdapterLoadsAndSavesBackUnchanged) {
  absl::StatusOr<LoraSpec> options =
      LoadAdapter(*model_, fixture_ + "/adapter_ref");
  ASSERT_TRUE(options.ok()) << options.status();
  testing::TempDir dir;
  ASSERT_TRUE(
      SaveAdapter(*model_, *options, "tiny-tinyllama-spm/model", dir.path())
          .ok());
  absl::StatusOr<TensorMap> original =
      LoadSafetensors(fixture_ + "/adapter_ref/adapter_model.safetensors");
  absl::StatusOr<TensorMap> saved =
      LoadSafetensors(dir.path() + "/adapter_model.safetensors");
  ASSERT_TRUE(original.ok() && saved.ok());
  ASSERT_EQ(original->size(), saved->size());
  for (const auto& [name, tensor] : *original) {
    ASSERT_TRUE(saved->count(name)) << name << " missing after re-save";
    EXPECT_TRUE(torch::equal(tensor, saved->at(name))) << name;
  }
}

// bf16 mixed precision against transformers' float32 logits: what bf16's
// 8-bit mantissa allows (relative rounding 2^-8 per operation, a few dozen
// operations deep), and never the float32 path in disguise.
TEST_F(FixtureTest, Bf16LogitsStayWithinBf16ToleranceOfTransformers) {
  const double fp32_error = MaxLogitError("logits0.safetensors");
  model_->Place(torch::kCPU, torch::kBFloat16, torch::kBFloat16);
  EXPECT_EQ(model_->compute_dtype(), torch::kBFloat16);
  EXPECT_EQ(model_->Weights(false).at("model.embed_tokens.weight").scalar_type(),
            torch::kBFloat16);
  absl::StatusOr<TensorMap> reference =
      LoadSafetensors(fixture_ + "/logits0.safetensors");
  ASSERT_TRUE(reference.ok());
  const double scale = reference->at("logits").abs().max().item<double>();
  const double bf16_error = MaxLogitError("logits0.safetensors");
  EXPECT_LT(bf16_error, 0.05 * scale) << "logit scale " << scale;
  EXPECT_GT(bf16_error, 10 * fp32_error) << "bf16 did not run";
}

TEST_F(FixtureTest, Bf16BaseWithFloat32LoraFactorsMatchesPeft) {
  model_->Place(torch::kCPU, torch::kBFloat16, torch::kBFloat16);
  ASSERT_TRUE(LoadAdapter(*model_, fixture_ + "/adapter_ref").ok());
  EXPECT_EQ(model_->layers()[0].q_proj.lora_a.scalar_type(), torch::kFloat32);
  absl::StatusOr<TensorMap> reference =
      LoadSafetensors(fixture_ + "/lora_logits0.safetensors");
  ASSERT_TRUE(reference.ok());
  const double scale = reference->at("logits").abs().max().item<double>();
  EXPECT_LT(MaxLogitError("lora_logits0.safetensors"), 0.05 * scale);
}

}  // namespace
}  // namespace lathe::engine
