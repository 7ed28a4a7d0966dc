#include "worker/engine/data/masked_thought.h"

#include <algorithm>
#include <charconv>
#include <random>

#include "absl/strings/str_cat.h"

namespace lathe::engine {

double MaskRateAt(const MaskedThoughtSpec& spec, int64_t steps_done,
                  int64_t total_steps) {
  if (spec.schedule == "constant") return spec.mask_rate;
  const double ramp = static_cast<double>(total_steps) * spec.warmup_ratio + 1;
  return std::min(spec.mask_rate * static_cast<double>(steps_done) / ramp,
                  spec.mask_rate);
}

absl::StatusOr<int64_t> MaskTokenId(const std::string& mask_token,
                                    int32_t pad_id, int64_t vocab_size) {
  int64_t id = pad_id;
  if (mask_token != "pad") {
    const char* end = mask_token.data() + mask_token.size();
    auto [ptr, error] = std::from_chars(mask_token.data(), end, id);
    if (mask_token.empty() || error != std::errc() || ptr != end || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("field \"objective.masked_thought.mask_token\" is \"",
                       mask_token, "\"; use \"pad\" or a token id"));
    }
  }
  if (id >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("field \"objective.masked_thought.mask_token\": id ", id,
                     " is not below the model's vocab_size ", vocab_size));
  }
  return id;
}

int64_t MaskTargets(Batch* batch, double rate, int64_t mask_id, uint64_t seed,
                    int64_t step, int64_t micro_batch) {
  batch->labels = batch->input_ids.clone();
  if (rate <= 0) return 0;
  // seed_seq and mt19937_64 are specified exactly by the standard, and the
  // uniform draw below is ours: the same mask on every platform.
  std::seed_seq seq{
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
      static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32),
      static_cast<uint32_t>(micro_batch)};
  std::mt19937_64 rng(seq);
  auto ids = batch->input_ids.accessor<int64_t, 2>();
  auto targets = batch->loss_mask.accessor<bool, 2>();
  int64_t masked = 0;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    for (int64_t t = 0; t < ids.size(1); ++t) {
      if (!targets[b][t]) continue;
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      if (u < rate) {
        ids[b][t] = mask_id;
        ++masked;
      }
    }
  }
  return masked;
}

}  // namespace lathe::engine
