#include "worker/engine/data/packing.h"

namespace lathe::engine {

Batch PackBatch(const std::vector<Example>& examples,
                const std::vector<size_t>& indices) {
  int64_t total = 0;
  for (size_t i : indices)
    total += static_cast<int64_t>(examples[i].ids.size());
  Batch batch;
  batch.input_ids = torch::empty({1, total}, torch::kInt64);
  batch.loss_mask = torch::empty({1, total}, torch::kBool);
  batch.layout.position_ids = torch::empty({1, total}, torch::kInt64);
  batch.layout.segments.emplace_back();
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto targets = batch.loss_mask.accessor<bool, 2>();
  auto positions = batch.layout.position_ids.accessor<int64_t, 2>();
  int64_t p = 0;
  for (size_t i : indices) {
    const Example& example = examples[i];
    for (size_t t = 0; t < example.ids.size(); ++t, ++p) {
      ids[0][p] = example.ids[t];
      targets[0][p] = t > 0 && example.loss_mask[t] != 0;
      positions[0][p] = static_cast<int64_t>(t);
    }
    batch.layout.segments[0].push_back(
        static_cast<int64_t>(example.ids.size()));
  }
  batch.tokens = total;
  batch.padding = 0;
  return batch;
}

Batch MakeInput(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, bool packing,
                int32_t pad_id) {
  return packing ? PackBatch(examples, indices)
                 : MakeBatch(examples, indices, pad_id);
}

}  // namespace lathe::engine
