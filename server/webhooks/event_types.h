// The webhook event types: a closed set, named on the wire as OpenAI's
// webhook events are ("fine_tuning.job.succeeded", …) plus Lathe's own,
// and which job event each one tells of. The store reads it when it records
// an event (to queue deliveries in that transaction), the operations when
// they check a subscription.
#ifndef LATHE_SERVER_WEBHOOKS_EVENT_TYPES_H_
#define LATHE_SERVER_WEBHOOKS_EVENT_TYPES_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "lathe/v1/fine_tuning.pb.h"

namespace lathe {

enum class WebhookEventType {
  kSucceeded,  // the job moved to succeeded
  kFailed,
  kCancelled,
  kRunning,  // an attempt started (again after a retry or a resume)
  kPaused,
  kMetrics,  // every metrics event (opt-in: many per job)
};

// "fine_tuning.job.succeeded", …
absl::string_view WebhookEventTypeName(WebhookEventType type);
// Inverse of WebhookEventTypeName; nullopt for an unknown name.
std::optional<WebhookEventType> ParseWebhookEventType(absl::string_view name);
// Every name, comma-separated, for messages.
std::string WebhookEventTypeNames();
// What a webhook created without event types receives: succeeded, failed,
// cancelled.
std::vector<WebhookEventType> DefaultWebhookEventTypes();
// The type a job event is delivered as: a status change to one of the
// statuses above, or a metrics event; nullopt for every other event.
std::optional<WebhookEventType> WebhookEventTypeOf(const v1::JobEvent& event);

}  // namespace lathe

#endif  // LATHE_SERVER_WEBHOOKS_EVENT_TYPES_H_
