// The learning-rate schedule: linear warmup, then linear decay to 0 (the
// Hugging Face "linear" schedule). Torch-free.
#ifndef LATHE_WORKER_ENGINE_SCHEDULE_H_
#define LATHE_WORKER_ENGINE_SCHEDULE_H_

#include <cstdint>

namespace lathe::engine {

// The rate for the optimizer step that follows `done` completed steps out of
// `total`: peak * done / warmup during warmup, then
// peak * (total - done) / (total - warmup). REQUIRES: 0 <= done < total.
double LearningRateAt(int64_t done, int64_t total, int64_t warmup, double peak);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_SCHEDULE_H_
