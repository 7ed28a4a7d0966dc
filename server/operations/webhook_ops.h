// The Webhooks operations: register, list and delete a project's webhooks
// and read their deliveries. A webhook of another project is NOT_FOUND,
// worded as for a missing one. Sending is the dispatcher's
// (server/webhooks/dispatcher.h); deliveries are queued by the store with
// the events they tell of.
//
// Thread-safe.
#ifndef LATHE_SERVER_OPERATIONS_WEBHOOK_OPS_H_
#define LATHE_SERVER_OPERATIONS_WEBHOOK_OPS_H_

#include <string>

#include "absl/status/statusor.h"
#include "lathe/v1/webhooks.pb.h"
#include "server/auth.h"
#include "server/operations/deps.h"

namespace lathe {

// The most webhooks one project may have.
constexpr int kMaxWebhooksPerProject = 16;

class WebhookOps {
 public:
  // What `deps` points to must outlive this.
  explicit WebhookOps(const OperationDeps& deps) : deps_(deps) {}

  // The webhook with its secret (the one time it is shown).
  // INVALID_ARGUMENT naming url, event_types[i] or description;
  // RESOURCE_EXHAUSTED (max_webhooks_per_project) beyond
  // kMaxWebhooksPerProject.
  absl::StatusOr<v1::Webhook> CreateWebhook(
      const Caller& caller, const v1::CreateWebhookRequest& request) const;
  absl::StatusOr<v1::ListWebhooksResponse> ListWebhooks(
      const Caller& caller, const v1::ListWebhooksRequest& request) const;
  absl::StatusOr<v1::DeleteWebhookResponse> DeleteWebhook(
      const Caller& caller, const v1::DeleteWebhookRequest& request) const;
  absl::StatusOr<v1::ListWebhookDeliveriesResponse> ListWebhookDeliveries(
      const Caller& caller,
      const v1::ListWebhookDeliveriesRequest& request) const;

 private:
  // The caller's webhook `webhook_id`; NOT_FOUND otherwise.
  absl::StatusOr<v1::Webhook> OwnedWebhook(const Caller& caller,
                                           const std::string& webhook_id) const;

  const OperationDeps deps_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_WEBHOOK_OPS_H_
