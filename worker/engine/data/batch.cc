#include "worker/engine/data/batch.h"

#include <algorithm>

namespace lathe::engine {

Batch MakeBatch(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, int32_t pad_id) {
  size_t T = 0;
  for (size_t i : indices) T = std::max(T, examples[i].ids.size());
  const auto B = static_cast<int64_t>(indices.size());
  Batch batch;
  batch.input_ids =
      torch::full({B, static_cast<int64_t>(T)}, pad_id, torch::kInt64);
  torch::Tensor attention_mask =
      torch::zeros({B, static_cast<int64_t>(T)}, torch::kInt64);
  batch.loss_mask = torch::zeros({B, static_cast<int64_t>(T)}, torch::kBool);
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto attention = attention_mask.accessor<int64_t, 2>();
  auto targets = batch.loss_mask.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const Example& example = examples[indices[b]];
    for (size_t t = 0; t < example.ids.size(); ++t) {
      ids[b][t] = example.ids[t];
      attention[b][t] = 1;
      targets[b][t] = t > 0 && example.loss_mask[t] != 0;
    }
    batch.tokens += static_cast<int64_t>(example.ids.size());
  }
  batch.layout = SequenceLayout::Padded(attention_mask);
  batch.padding = B * static_cast<int64_t>(T) - batch.tokens;
  return batch;
}

Batch ToDevice(Batch batch, torch::Device device) {
  if (batch.input_ids.device() == device) return batch;
  batch.input_ids = batch.input_ids.to(device);
  batch.loss_mask = batch.loss_mask.to(device);
  if (batch.labels.defined()) batch.labels = batch.labels.to(device);
  batch.layout.position_ids = batch.layout.position_ids.to(device);
  return batch;
}

const torch::Tensor& Labels(const Batch& batch) {
  return batch.labels.defined() ? batch.labels : batch.input_ids;
}

int64_t Targets(const Batch& batch) {
  return batch.loss_mask.slice(1, 1).sum().item<int64_t>();
}

LossStats CausalLmLoss(const torch::Tensor& logits, const Batch& batch) {
  const int64_t V = logits.size(-1);
  torch::Tensor mask = batch.loss_mask.slice(1, 1).reshape({-1});  // [B*(T-1)]
  torch::Tensor predicted =
      logits.slice(1, 0, -1).reshape({-1, V}).index({mask});  // [N, V]
  torch::Tensor labels = Labels(batch).slice(1, 1).reshape({-1}).index({mask});
  LossStats stats;
  stats.loss = torch::cross_entropy_loss(predicted, labels);
  stats.targets = labels.size(0);
  stats.correct = predicted.argmax(-1).eq(labels).sum().item<int64_t>();
  return stats;
}

}  // namespace lathe::engine
