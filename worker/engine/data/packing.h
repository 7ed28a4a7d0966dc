// Padding-free packing: the examples of a micro-batch laid end to end in
// one row, each a segment of its own (positions restart at 0, attention
// stays inside it, and its first token is not a target, so the last token
// of one example never predicts the first of the next).
//
// The choice: one row per micro-batch, holding exactly the examples the
// data cursor gave that micro-batch, in that order. Filling rows of
// max_seq_len greedily would still pad each row to the longest; a single
// varlen row (flash-attention's cu_seqlens layout) pads nothing, and since
// attention runs per segment its cost is the same as the padded batch's
// without the padding. The row is never longer than the padded batch
// (batch_size x the longest example). Keeping the cursor's micro-batches
// means packing changes no step's examples: the data order, the step count
// and the checkpoint's data cursor are those of the unpacked run, and a
// step's loss (sum of per-token losses / the step's target tokens) is the
// same number.
#ifndef LATHE_WORKER_ENGINE_DATA_PACKING_H_
#define LATHE_WORKER_ENGINE_DATA_PACKING_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "worker/engine/data/batch.h"
#include "worker/engine/data/chat_data.h"

namespace lathe::engine {

// examples[indices] in one row [1, total length]; layout.segments[0] their
// lengths; padding 0. REQUIRES: indices non-empty and in range, every
// example non-empty.
Batch PackBatch(const std::vector<Example>& examples,
                const std::vector<size_t>& indices);

// examples[indices] as the model's input: PackBatch when `packing`, else
// MakeBatch (batch.h) padded with pad_id.
Batch MakeInput(const std::vector<Example>& examples,
                const std::vector<size_t>& indices, bool packing,
                int32_t pad_id);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_PACKING_H_
