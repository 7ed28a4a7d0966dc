// When a failed webhook delivery is tried again: the Standard Webhooks
// schedule (after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
// 10 h, …) scaled by `base` / 5 s, so that a test runs the same schedule
// in fractions of a second.
#ifndef LATHE_SERVER_WEBHOOKS_RETRY_H_
#define LATHE_SERVER_WEBHOOKS_RETRY_H_

#include <optional>

#include "absl/time/time.h"

namespace lathe {

struct WebhookRetryOptions {
  absl::Duration base = absl::Seconds(5);  // the first retry's delay
  int max_attempts = 8;                    // the first and 7 retries
};

// The wait before the next attempt of a delivery that has failed
// `attempts_made` (>= 1) times; nullopt once it has had max_attempts.
std::optional<absl::Duration> WebhookRetryDelay(
    const WebhookRetryOptions& options, int attempts_made);

}  // namespace lathe

#endif  // LATHE_SERVER_WEBHOOKS_RETRY_H_
