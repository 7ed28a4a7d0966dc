#include "scheduler/memory_estimate.h"

#include <algorithm>

namespace lathe::scheduler {
namespace {

// fp32 master copy + fp32 gradient + Adam's first and second moments.
constexpr int64_t kBytesPerTrainableParameter = 4 + 4 + 4 + 4;
// Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
// Transformer Models") count 34 bytes per token per hidden unit per layer in
// 16-bit precision, once attention scores are not stored (fused attention):
// that is 17 stored values.
constexpr int64_t kActivationValuesPerTokenHiddenLayer = 17;
// fp32 logits and their gradient.
constexpr int64_t kLogitBytesPerTokenVocab = 4 * 2;

// The parameters `part` trains; every parameter when the layer shapes are
// not known.
int64_t PartParameters(const ModelShape& m, const TrainedPart& part) {
  if (m.num_layers <= 0 || m.intermediate_size <= 0 || m.attention_size <= 0 ||
      m.kv_size <= 0) {
    return m.parameters;
  }
  const int64_t ends =
      m.vocab_size * m.hidden_size * (m.tied_embeddings ? 1 : 2) +
      m.hidden_size;
  const int64_t layer =
      std::max<int64_t>(m.parameters - ends, 0) / m.num_layers;
  const int64_t trained =
      (part.ends ? ends : 0) + part.whole_layers * layer +
      part.q_o_matrices * m.hidden_size * m.attention_size +
      part.k_v_matrices * m.hidden_size * m.kv_size +
      part.mlp_matrices * m.hidden_size * m.intermediate_size +
      part.norms * m.hidden_size;
  return std::min(trained, m.parameters);
}

int64_t WeightBytes(const ModelShape& m) {
  return m.parameters * m.bytes_per_weight;
}

}  // namespace

int64_t TrainableParameters(const ModelShape& model, const TrainShape& train) {
  if (train.method == TrainMethod::kFull) {
    return train.part ? PartParameters(model, *train.part) : model.parameters;
  }
  return 2 * train.lora_rank * model.hidden_size *
         train.lora_matrices_per_layer * model.num_layers;
}

int64_t EstimateMemoryBytes(const ModelShape& model, const TrainShape& train) {
  const int64_t tokens = train.batch_size * train.sequence_length;
  const int64_t weights = WeightBytes(model);
  const int64_t optimizer =
      TrainableParameters(model, train) * kBytesPerTrainableParameter;
  const int64_t activations = tokens * model.hidden_size * model.num_layers *
                              kActivationValuesPerTokenHiddenLayer *
                              model.bytes_per_weight;
  const int64_t logits = tokens * model.vocab_size * kLogitBytesPerTokenVocab;
  return weights + optimizer + activations + logits + kMemoryOverheadBytes;
}

int64_t SharedBaseBytes(const ModelShape& model, const TrainShape& train) {
  return train.method == TrainMethod::kLora ? WeightBytes(model) : 0;
}

}  // namespace lathe::scheduler
