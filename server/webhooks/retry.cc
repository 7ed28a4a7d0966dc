#include "server/webhooks/retry.h"

#include <algorithm>
#include <iterator>

namespace lathe {
namespace {

// Each retry's delay in units of the first's: 5 s, 5 min, 30 min, 2 h, 5 h,
// then 10 h for every later one.
constexpr int kScheduleInBase[] = {1, 60, 360, 1440, 3600, 7200};

}  // namespace

std::optional<absl::Duration> WebhookRetryDelay(
    const WebhookRetryOptions& options, int attempts_made) {
  if (attempts_made >= options.max_attempts) return std::nullopt;
  int i = std::clamp(attempts_made - 1, 0,
                     static_cast<int>(std::size(kScheduleInBase)) - 1);
  return options.base * kScheduleInBase[i];
}

}  // namespace lathe
