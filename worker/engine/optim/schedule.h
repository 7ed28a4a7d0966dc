// The learning-rate schedule: linear warmup from 0 to the peak, then a
// "linear" decay to 0, a "cosine" decay to 0, or a "constant" peak (the
// Hugging Face schedules of those names). Torch-free.
#ifndef LATHE_WORKER_ENGINE_OPTIM_SCHEDULE_H_
#define LATHE_WORKER_ENGINE_OPTIM_SCHEDULE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace lathe::engine {

enum class LrSchedule { kLinear, kCosine, kConstant };

// "linear", "cosine" or "constant". INVALID_ARGUMENT naming the field
// "lr_scheduler" otherwise.
absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name);

// The rate for the optimizer step that follows `done` completed steps out of
// `total`: peak * done / warmup during warmup, then with
// progress = (done - warmup) / (total - warmup):
//   kLinear   peak * (1 - progress)
//   kCosine   peak * (1 + cos(pi * progress)) / 2
//   kConstant peak
// REQUIRES: 0 <= done < total.
double LearningRateAt(LrSchedule schedule, int64_t done, int64_t total,
                      int64_t warmup, double peak);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_OPTIM_SCHEDULE_H_
