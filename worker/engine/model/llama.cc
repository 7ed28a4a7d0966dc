#include "worker/engine/model/llama.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/model/activation_checkpoint.h"

namespace lathe::engine {
namespace {

// Moves a model's named tensors out of a TensorMap, checking their shapes.
class TensorTaker {
 public:
  TensorTaker(TensorMap& tensors, const std::string& source)
      : tensors_(tensors), source_(source) {}

  absl::StatusOr<torch::Tensor> Take(const std::string& name,
                                     std::vector<int64_t> shape) {
    return TakeTensor(tensors_, name, shape, source_);
  }

  absl::StatusOr<Linear> TakeLinear(const std::string& prefix, int64_t out,
                                    int64_t in, bool bias) {
    Linear linear;
    ASSIGN_OR_RETURN(linear.weight, Take(prefix + ".weight", {out, in}));
    if (bias) {
      ASSIGN_OR_RETURN(linear.bias, Take(prefix + ".bias", {out}));
    }
    return linear;
  }

 private:
  TensorMap& tensors_;
  const std::string& source_;
};

// In float32 whatever x's dtype, the result in x's dtype.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                      double eps) {
  const torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  return (weight.to(torch::kFloat32) * (xf * torch::rsqrt(variance + eps)))
      .to(x.scalar_type());
}

// `t` in the dtype of `like` (the same tensor when it already is).
torch::Tensor As(const torch::Tensor& t, const torch::Tensor& like) {
  return !t.defined() || t.scalar_type() == like.scalar_type()
             ? t
             : t.to(like.scalar_type());
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

// HF's inverse frequencies, computed in float32 as transformers does, with
// Llama 3's smooth scaling of low frequencies when configured.
torch::Tensor InverseFrequencies(const ModelConfig& c) {
  torch::Tensor exponent =
      torch::arange(0, c.head_dim, 2, torch::kInt64).to(torch::kFloat32) /
      static_cast<double>(c.head_dim);
  torch::Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponent);
  const RopeScaling& s = c.rope_scaling;
  if (s.factor <= 0) return inv_freq;
  const double old_len = static_cast<double>(s.original_max_position);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  torch::Tensor wavelen = 2 * std::numbers::pi / inv_freq;
  torch::Tensor scaled =
      torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  torch::Tensor smooth = (old_len / wavelen - s.low_freq_factor) /
                         (s.high_freq_factor - s.low_freq_factor);
  torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  torch::Tensor medium =
      (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(medium, smoothed, scaled);
}

// torch::dropout's CPU computation (ATen's _dropout_impl: a Bernoulli(1 - p)
// mask divided by 1 - p, times x), drawing from `generator`.
torch::Tensor Dropout(const torch::Tensor& x, double p, bool training,
                      const at::Generator& generator) {
  if (!generator.defined()) return torch::dropout(x, p, training);
  if (!training || p == 0 || x.numel() == 0) return x;
  torch::Tensor noise = torch::empty_like(x);
  noise.bernoulli_(1 - p, generator);
  noise.div_(1 - p);
  return x * noise;
}

}  // namespace

torch::Tensor Linear::Forward(const torch::Tensor& x, bool training,
                              bool adapter,
                              const at::Generator& generator) const {
  torch::Tensor y = torch::linear(x, As(weight, x), As(bias, x));
  if (s2_delta.defined() && adapter) {
    return s2_rows ? y.index_add(y.dim() - 1, s2_index,
                                 torch::linear(x, As(s2_delta, x)))
                   : y + torch::linear(x.index_select(x.dim() - 1, s2_index),
                                       As(s2_delta, x));
  }
  if (!lora_a.defined() || !adapter) return y;
  torch::Tensor dropped = Dropout(x, lora_dropout, training, generator);
  torch::Tensor lora =
      torch::linear(torch::linear(dropped, As(lora_a, x)), As(lora_b, x)) *
      lora_scale;
  if (!lora_magnitude.defined()) return y + lora;
  // DoRA, term for term as PEFT's DoraLinearLayer (dropout on: the base
  // product of the dropped input is computed again).
  const torch::Tensor g =
      As(lora_magnitude, x) / DoraRowNorm().to(x.scalar_type());
  const bool dropping = training && lora_dropout > 0;
  const torch::Tensor base = bias.defined() ? y - As(bias, x) : y;
  torch::Tensor base_dropped =
      dropping ? torch::linear(dropped, As(weight, x)) : base;
  torch::Tensor out = base + (g - 1) * base_dropped + g * lora;
  return bias.defined() ? out + As(bias, x) : out;
}

torch::Tensor Linear::DoraRowNorm() const {
  torch::NoGradGuard no_grad;
  return (weight.to(torch::kFloat32) +
          lora_scale * torch::matmul(lora_b.to(torch::kFloat32),
                                     lora_a.to(torch::kFloat32)))
      .norm(2, {1});
}

torch::Tensor Linear::MergedWeight() const {
  torch::NoGradGuard no_grad;
  if (s2_delta.defined()) {
    return weight.to(torch::kFloat32)
        .index_add(s2_rows ? 0 : 1, s2_index, s2_delta.to(torch::kFloat32))
        .to(weight.scalar_type());
  }
  if (!lora_a.defined()) return weight;
  torch::Tensor merged = weight + lora_scale * torch::matmul(lora_b, lora_a);
  if (!lora_magnitude.defined()) return merged;
  return (lora_magnitude / DoraRowNorm()).unsqueeze(1) * merged;
}

Linear* DecoderLayer::Projection(std::string_view name) {
  return const_cast<Linear*>(std::as_const(*this).Projection(name));
}

const Linear* DecoderLayer::Projection(std::string_view name) const {
  if (name == "q_proj") return &q_proj;
  if (name == "k_proj") return &k_proj;
  if (name == "v_proj") return &v_proj;
  if (name == "o_proj") return &o_proj;
  if (name == "gate_proj") return &gate_proj;
  if (name == "up_proj") return &up_proj;
  if (name == "down_proj") return &down_proj;
  return nullptr;
}

std::string_view ProjectionGroup(std::string_view name) {
  return name == "gate_proj" || name == "up_proj" || name == "down_proj"
             ? "mlp"
             : "self_attn";
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(
    const std::string& model_dir) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(TensorMap tensors, LoadModelWeights(model_dir));
  return FromTensors(config, std::move(tensors), model_dir);
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::FromTensors(
    const ModelConfig& c, TensorMap tensors, const std::string& source) {
  auto model = std::unique_ptr<LlamaModel>(new LlamaModel(c));
  TensorTaker taker(tensors, source);
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  const int64_t C = c.hidden_size;
  ASSIGN_OR_RETURN(model->embed_tokens_,
                   taker.Take("model.embed_tokens.weight", {c.vocab_size, C}));
  ASSIGN_OR_RETURN(model->norm_, taker.Take("model.norm.weight", {C}));
  if (c.tie_word_embeddings) {
    model->lm_head_ = model->embed_tokens_;
  } else {
    ASSIGN_OR_RETURN(model->lm_head_,
                     taker.Take("lm_head.weight", {c.vocab_size, C}));
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    DecoderLayer layer;
    ASSIGN_OR_RETURN(layer.input_norm,
                     taker.Take(p + "input_layernorm.weight", {C}));
    ASSIGN_OR_RETURN(layer.post_attention_norm,
                     taker.Take(p + "post_attention_layernorm.weight", {C}));
    ASSIGN_OR_RETURN(layer.q_proj, taker.TakeLinear(p + "self_attn.q_proj",
                                                    q_dim, C, c.qkv_bias));
    ASSIGN_OR_RETURN(layer.k_proj, taker.TakeLinear(p + "self_attn.k_proj",
                                                    kv_dim, C, c.qkv_bias));
    ASSIGN_OR_RETURN(layer.v_proj, taker.TakeLinear(p + "self_attn.v_proj",
                                                    kv_dim, C, c.qkv_bias));
    ASSIGN_OR_RETURN(layer.o_proj, taker.TakeLinear(p + "self_attn.o_proj", C,
                                                    q_dim, c.o_bias));
    ASSIGN_OR_RETURN(
        layer.gate_proj,
        taker.TakeLinear(p + "mlp.gate_proj", c.intermediate_size, C, false));
    ASSIGN_OR_RETURN(
        layer.up_proj,
        taker.TakeLinear(p + "mlp.up_proj", c.intermediate_size, C, false));
    ASSIGN_OR_RETURN(
        layer.down_proj,
        taker.TakeLinear(p + "mlp.down_proj", C, c.intermediate_size, false));
    model->layers_.push_back(std::move(layer));
  }
  model->inv_freq_ = InverseFrequencies(c);
  return model;
}

void LlamaModel::Place(torch::Device device, torch::ScalarType storage,
                       torch::ScalarType compute) {
  torch::NoGradGuard no_grad;
  auto place = [&](torch::Tensor& t) {
    if (t.defined()) t = t.to(device, storage);
  };
  place(embed_tokens_);
  place(norm_);
  if (config_.tie_word_embeddings) {
    lm_head_ = embed_tokens_;
  } else {
    place(lm_head_);
  }
  for (DecoderLayer& layer : layers_) {
    place(layer.input_norm);
    place(layer.post_attention_norm);
    for (Linear* linear :
         {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
          &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
      place(linear->weight);
      place(linear->bias);
    }
  }
  inv_freq_ = inv_freq_.to(device);
  compute_dtype_ = compute;
}

TensorMap LlamaModel::Weights(bool merge_lora) const {
  TensorMap out;
  out["model.embed_tokens.weight"] = embed_tokens_;
  out["model.norm.weight"] = norm_;
  if (!config_.tie_word_embeddings) out["lm_head.weight"] = lm_head_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& layer = layers_[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    out[p + "input_layernorm.weight"] = layer.input_norm;
    out[p + "post_attention_layernorm.weight"] = layer.post_attention_norm;
    for (const char* name : kProjectionNames) {
      const Linear& linear = *layer.Projection(name);
      const std::string key =
          absl::StrCat(p, std::string(ProjectionGroup(name)), ".", name, ".");
      out[key + "weight"] = merge_lora ? linear.MergedWeight() : linear.weight;
      if (linear.bias.defined()) out[key + "bias"] = linear.bias;
    }
  }
  return out;
}

SequenceLayout SequenceLayout::Padded(const torch::Tensor& attention_mask) {
  const int64_t B = attention_mask.size(0), T = attention_mask.size(1);
  SequenceLayout layout;
  layout.position_ids = torch::arange(T, torch::kInt64)
                            .expand({B, T})
                            .to(attention_mask.device());
  const torch::Tensor lengths =
      attention_mask.sum(1).to(torch::kCPU, torch::kInt64).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t real = lengths.data_ptr<int64_t>()[b];
    std::vector<int64_t>& row = layout.segments.emplace_back();
    if (real > 0) row.push_back(real);
    if (real < T) row.push_back(T - real);  // the padding, a segment of its own
  }
  return layout;
}

torch::Tensor LlamaModel::Attention(const DecoderLayer& layer,
                                    const torch::Tensor& x,
                                    const torch::Tensor& cos,
                                    const torch::Tensor& sin,
                                    const SequenceLayout& layout,
                                    const ForwardOptions& options) const {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = config_.num_attention_heads;
  const int64_t KV = config_.num_key_value_heads;
  const int64_t D = config_.head_dim;
  const bool training = options.training;
  const bool adapters = options.adapters;
  // [B, T, heads * D] -> [B, heads, T, D]
  auto heads = [&](const torch::Tensor& t, int64_t n) {
    return t.view({B, T, n, D}).transpose(1, 2);
  };
  torch::Tensor q = heads(layer.q_proj.Forward(x, training, adapters, generator_), H);
  torch::Tensor k = heads(layer.k_proj.Forward(x, training, adapters, generator_), KV);
  torch::Tensor v = heads(layer.v_proj.Forward(x, training, adapters, generator_), KV);
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;
  if (KV != H) {  // grouped-query attention: each kv head serves H/KV heads
    k = k.repeat_interleave(H / KV, 1);
    v = v.repeat_interleave(H / KV, 1);
  }
  torch::Tensor out =
      SegmentedCausalAttention(q, k, v, layout.segments, options.attention)
          .transpose(1, 2)
          .reshape({B, T, H * D});
  return layer.o_proj.Forward(out, training, adapters, generator_);
}

torch::Tensor LlamaModel::Layer(const DecoderLayer& layer,
                                const torch::Tensor& x,
                                const torch::Tensor& cos,
                                const torch::Tensor& sin,
                                const SequenceLayout& layout,
                                const ForwardOptions& options) const {
  const bool training = options.training;
  const bool adapters = options.adapters;
  torch::Tensor h = RmsNorm(x, layer.input_norm, config_.rms_norm_eps);
  torch::Tensor y = x + Attention(layer, h, cos, sin, layout, options);
  h = RmsNorm(y, layer.post_attention_norm, config_.rms_norm_eps);
  return y + layer.down_proj.Forward(
                 torch::silu(layer.gate_proj.Forward(h, training, adapters, generator_)) *
                     layer.up_proj.Forward(h, training, adapters, generator_),
                 training, adapters, generator_);
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& input_ids,
                                  const torch::Tensor& attention_mask,
                                  bool training) const {
  const int64_t N = num_virtual_tokens();
  if (N > 0) {
    // The virtual tokens' placeholders, attended like any token.
    const int64_t B = input_ids.size(0);
    const torch::Tensor ids =
        torch::cat({torch::zeros({B, N}, input_ids.options()), input_ids}, 1);
    const torch::Tensor mask = torch::cat(
        {torch::ones({B, N}, attention_mask.options()), attention_mask}, 1);
    const torch::Tensor hidden =
        Hidden(ids, SequenceLayout::Padded(mask), {.training = training})
            .slice(1, N);
    return torch::linear(hidden, As(lm_head_, hidden)).to(torch::kFloat32);
  }
  const torch::Tensor hidden = Hidden(
      input_ids, SequenceLayout::Padded(attention_mask), {.training = training});
  return torch::linear(hidden, As(lm_head_, hidden)).to(torch::kFloat32);
}

torch::Tensor LlamaModel::Hidden(const torch::Tensor& input_ids,
                                 const SequenceLayout& layout,
                                 const ForwardOptions& options) const {
  torch::Tensor x = torch::embedding(embed_tokens_, input_ids)  // [B, T, C]
                        .to(compute_dtype_);
  if (const int64_t N = num_virtual_tokens(); N > 0 && options.adapters) {
    // Prompt tuning: the first N positions of each example are the virtual
    // tokens (their gradient reaches prompt_embeddings_ only). Without
    // adapters the examples carry no placeholders: the base alone.
    const torch::Tensor virtual_position = layout.position_ids.lt(N);
    const torch::Tensor rows = torch::embedding(
        As(prompt_embeddings_, x),
        layout.position_ids.clamp_max(N - 1));
    x = torch::where(virtual_position.unsqueeze(-1), rows, x);
  }
  // angles[b, t]: position_ids[b, t] * inv_freq, twice -> [B, 1, T, D]
  torch::Tensor freqs = layout.position_ids.to(torch::kFloat32).unsqueeze(-1) *
                        inv_freq_.to(x.device());
  torch::Tensor angles = torch::cat({freqs, freqs}, -1).unsqueeze(1);
  // In float32, used in the compute dtype (as transformers does).
  torch::Tensor cos = angles.cos().to(compute_dtype_);
  torch::Tensor sin = angles.sin().to(compute_dtype_);
  for (const DecoderLayer& layer : layers_) {
    if (!options.checkpoint_layers) {
      x = Layer(layer, x, cos, sin, layout, options);
      continue;
    }
    // The recompute runs in backward, after this call has returned: it
    // holds copies of what it needs (the model and its layers outlive it).
    x = Checkpointed(
        [this, &layer, cos, sin, layout, options](const torch::Tensor& in) {
          return Layer(layer, in, cos, sin, layout, options);
        },
        x, generator_);
  }
  return RmsNorm(x, norm_, config_.rms_norm_eps);
}

}  // namespace lathe::engine
