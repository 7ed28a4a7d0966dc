#include "worker/engine/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace lathe::engine {

absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name) {
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "cosine") return LrSchedule::kCosine;
  if (name == "constant") return LrSchedule::kConstant;
  return absl::InvalidArgumentError(
      absl::StrCat("field \"lr_scheduler\" is \"", name,
                   "\"; known: linear, cosine, constant"));
}

double LearningRateAt(LrSchedule schedule, int64_t done, int64_t total,
                      int64_t warmup, double peak) {
  if (done < warmup) return peak * static_cast<double>(done) / warmup;
  const int64_t decay_steps = std::max<int64_t>(1, total - warmup);
  const double progress =
      std::clamp(static_cast<double>(done - warmup) / decay_steps, 0.0, 1.0);
  switch (schedule) {
    case LrSchedule::kLinear:
      return peak * (1 - progress);
    case LrSchedule::kCosine:
      return peak * 0.5 * (1 + std::cos(std::numbers::pi * progress));
    case LrSchedule::kConstant:
      return peak;
  }
  return peak;
}

}  // namespace lathe::engine
