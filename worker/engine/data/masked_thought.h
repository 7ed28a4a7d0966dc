// Masked Thought (MFT, METHODS.md §3; ChangyuChen347/MaskedThought): input
// masking of the response. Each target position of a batch (every response
// token, its final EOS included; never the prompt) has its INPUT id replaced
// by the mask token independently with probability p; the labels stay the
// unmasked ids, so the model learns to predict the original next token from
// a partly masked response. Attention is unchanged (masked tokens are still
// attended, the paper's default). Works on padded and packed batches alike:
// both mark targets in Batch::loss_mask.
//
// The mask of a step is drawn from a generator seeded by (seed, step,
// micro-batch) alone: no state to checkpoint, and a resumed run masks
// exactly what the uninterrupted one would have. Torch-light: the batch
// must still be on the CPU.
#ifndef LATHE_WORKER_ENGINE_DATA_MASKED_THOUGHT_H_
#define LATHE_WORKER_ENGINE_DATA_MASKED_THOUGHT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// The mask rate of the step that follows `steps_done` steps of
// `total_steps` (see MaskedThoughtSpec::schedule).
double MaskRateAt(const MaskedThoughtSpec& spec, int64_t steps_done,
                  int64_t total_steps);

// The id "pad" or a decimal id stands for. INVALID_ARGUMENT naming
// objective.masked_thought.mask_token when it is neither or not below
// vocab_size.
absl::StatusOr<int64_t> MaskTokenId(const std::string& mask_token,
                                    int32_t pad_id, int64_t vocab_size);

// Sets batch->labels to the original ids, then replaces each target
// position of batch->input_ids with `mask_id` with probability `rate`.
// Returns how many positions were masked. REQUIRES: the batch on the CPU,
// its labels not set, rate in [0, 1].
int64_t MaskTargets(Batch* batch, double rate, int64_t mask_id, uint64_t seed,
                    int64_t step, int64_t micro_batch);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_MASKED_THOUGHT_H_
