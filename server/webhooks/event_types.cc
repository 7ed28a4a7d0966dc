#include "server/webhooks/event_types.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lathe {
namespace {

struct TypeRow {
  WebhookEventType type;
  absl::string_view name;
  v1::JobStatus status;  // UNSPECIFIED: not a status change
};

constexpr TypeRow kTypes[] = {
    {WebhookEventType::kSucceeded, "fine_tuning.job.succeeded",
     v1::JOB_STATUS_SUCCEEDED},
    {WebhookEventType::kFailed, "fine_tuning.job.failed",
     v1::JOB_STATUS_FAILED},
    {WebhookEventType::kCancelled, "fine_tuning.job.cancelled",
     v1::JOB_STATUS_CANCELLED},
    {WebhookEventType::kRunning, "fine_tuning.job.running",
     v1::JOB_STATUS_RUNNING},
    {WebhookEventType::kPaused, "fine_tuning.job.paused",
     v1::JOB_STATUS_PAUSED},
    {WebhookEventType::kMetrics, "fine_tuning.job.metrics",
     v1::JOB_STATUS_UNSPECIFIED},
};

}  // namespace

absl::string_view WebhookEventTypeName(WebhookEventType type) {
  for (const TypeRow& row : kTypes) {
    if (row.type == type) return row.name;
  }
  return "";
}

std::optional<WebhookEventType> ParseWebhookEventType(absl::string_view name) {
  for (const TypeRow& row : kTypes) {
    if (row.name == name) return row.type;
  }
  return std::nullopt;
}

std::string WebhookEventTypeNames() {
  return absl::StrJoin(kTypes, ", ", [](std::string* out, const TypeRow& row) {
    absl::StrAppend(out, row.name);
  });
}

std::vector<WebhookEventType> DefaultWebhookEventTypes() {
  return {WebhookEventType::kSucceeded, WebhookEventType::kFailed,
          WebhookEventType::kCancelled};
}

std::optional<WebhookEventType> WebhookEventTypeOf(const v1::JobEvent& event) {
  if (event.type() == "metrics") return WebhookEventType::kMetrics;
  if (event.status() == v1::JOB_STATUS_UNSPECIFIED) return std::nullopt;
  for (const TypeRow& row : kTypes) {
    if (row.status == event.status()) return row.type;
  }
  return std::nullopt;
}

}  // namespace lathe
