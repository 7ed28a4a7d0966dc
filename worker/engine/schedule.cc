#include "worker/engine/schedule.h"

#include <algorithm>

namespace lathe::engine {

double LearningRateAt(int64_t done, int64_t total, int64_t warmup,
                      double peak) {
  if (done < warmup) return peak * static_cast<double>(done) / warmup;
  const int64_t decay_steps = std::max<int64_t>(1, total - warmup);
  return peak * std::max(0.0, static_cast<double>(total - done) / decay_steps);
}

}  // namespace lathe::engine
