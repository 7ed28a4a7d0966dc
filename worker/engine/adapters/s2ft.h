// S²FT, structured sparse fine-tuning (METHODS.md §6.1; Yang et al.,
// NeurIPS 2024): whole rows or columns of a few frozen projections trained
// densely, chosen model-wide at random (common/s2ft_selection.h):
//   v_proj rows of the selected KV heads       (rows mode)
//   o_proj columns of the selected query heads (columns mode)
//   up_proj rows of the selected FFN channels  (rows mode)
//   down_proj columns of the selected channels (columns mode)
// Each selected slice holds a trainable float32 delta on the base's device,
// zero at the start (the reference's s2 parameters); Linear applies it
// unfused. The reference permutes channels to make the slices contiguous;
// Lathe indexes them in the original order instead, the same function
// (S2ftTest.PermutingFfnChannelsKeepsTheLogits proves the invariance).
//
// The sparse diff, a folder: s2ft_model.safetensors with, per adapted
// weight, "<weight name>.rows.index" (I64 [k], ascending, original order)
// and "<weight name>.rows.delta" (F32 [k, in]), or ".cols.index" and
// ".cols.delta" (F32 [out, k]), e.g. "model.layers.0.mlp.down_proj.cols.delta";
// and s2ft_config.json: {"format": "lathe-s2ft", "version": 1, the ratios,
// "seed", "base_model_name_or_path", "model": the base's shape, and
// "base_fingerprint": FNV-1a 64 over the base's selected slices rounded to
// bfloat16 (so a base held in bf16 or float32 gives the same),
// "merged_fingerprint": the same of base + delta, and
// "trainable_parameters"}. Applying: W[idx] += delta (W[:, idx] += delta),
// checked against base_fingerprint; reverting: -=, checked against
// merged_fingerprint.
#ifndef LATHE_WORKER_ENGINE_ADAPTERS_S2FT_H_
#define LATHE_WORKER_ENGINE_ADAPTERS_S2FT_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model/llama.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

inline constexpr char kS2ftWeightsFile[] = "s2ft_model.safetensors";
inline constexpr char kS2ftConfigFile[] = "s2ft_config.json";

// Gives `model` the trainable slices `options` selects with seed
// `options.seed` (`run_seed` when -1). INVALID_ARGUMENT naming the field
// when a ratio selects nothing of this model at all (every count
// truncates to 0), or the spec is invalid.
absl::Status AttachS2ft(LlamaModel& model, const S2ftSpec& options,
                        uint64_t run_seed);

// The deltas, keyed "<weight name>.rows.delta" / ".cols.delta"; they share
// storage with the model.
TensorMap S2ftParameters(const LlamaModel& model);

// Writes the sparse diff of `model`'s slices to `dir` (created if needed).
// INTERNAL on I/O failure.
absl::Status SaveS2ft(const LlamaModel& model, const S2ftSpec& options,
                      uint64_t run_seed, const std::string& base_model_name,
                      const std::string& dir);

// Reads the sparse diff in `dir` and attaches it (frozen) to `model`, the
// deltas negated when `negate`. Returns its settings (seed resolved).
// INVALID_ARGUMENT naming the file and the field or tensor for a malformed
// config, a model of another shape, a missing or mis-shaped tensor, an
// index out of range; FAILED_PRECONDITION when the base's fingerprint is
// not the one the diff was made on.
absl::StatusOr<S2ftSpec> LoadS2ft(LlamaModel& model, const std::string& dir,
                                  bool negate = false);

// `lathe-worker s2ft-apply`: the base model folder `model_dir` with the
// diff in `diff_dir` added (subtracted with `revert`), written as a model
// folder to `out_dir` in the base's dtype. Errors as LoadS2ft, the model's.
absl::Status ApplyS2ftDiff(const std::string& model_dir,
                           const std::string& diff_dir,
                           const std::string& out_dir, bool revert);

// An S²FT run's result: the merged model of the base folder `model_dir`
// and the diff already in `dir` (ApplyS2ftDiff into `dir` itself), the
// diff's merged_fingerprint set from the written model, so that it
// reverts even when training held the base in a lower precision than its
// files.
absl::Status ExportS2ftMerged(const std::string& model_dir,
                              const std::string& dir);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ADAPTERS_S2FT_H_
