#include "server/grpc_adapter.h"
#include "server/grpc_auth.h"
#include "server/services.h"

namespace lathe {

grpc::Status WebhooksService::CreateWebhook(
    grpc::ServerContext* context, const v1::CreateWebhookRequest* request,
    v1::Webhook* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->webhooks.CreateWebhook(c, *request);
      },
      response);
}

grpc::Status WebhooksService::ListWebhooks(
    grpc::ServerContext* context, const v1::ListWebhooksRequest* request,
    v1::ListWebhooksResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->webhooks.ListWebhooks(c, *request);
      },
      response);
}

grpc::Status WebhooksService::DeleteWebhook(
    grpc::ServerContext* context, const v1::DeleteWebhookRequest* request,
    v1::DeleteWebhookResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->webhooks.DeleteWebhook(c, *request);
      },
      response);
}

grpc::Status WebhooksService::ListWebhookDeliveries(
    grpc::ServerContext* context,
    const v1::ListWebhookDeliveriesRequest* request,
    v1::ListWebhookDeliveriesResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->webhooks.ListWebhookDeliveries(c, *request);
      },
      response);
}

}  // namespace lathe
