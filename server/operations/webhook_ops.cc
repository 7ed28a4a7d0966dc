#include "server/operations/webhook_ops.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/control_chars.h"
#include "common/echo.h"
#include "common/ids.h"
#include "common/status_macros.h"
#include "server/request_limits.h"
#include "server/webhooks/event_types.h"
#include "server/webhooks/signature.h"
#include "server/webhooks/url.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

constexpr size_t kMaxDescriptionBytes = 512;

absl::Status CheckLimit(int limit) {
  if (limit < 0 || limit > 100) {
    return absl::InvalidArgumentError("limit: must be 1..100");
  }
  return absl::OkStatus();
}

// The request's event types, each known and named once; the default ones
// when it names none.
absl::StatusOr<std::vector<std::string>> EventTypes(
    const v1::CreateWebhookRequest& r) {
  std::vector<std::string> out;
  if (r.event_types().empty()) {
    for (WebhookEventType t : DefaultWebhookEventTypes()) {
      out.emplace_back(WebhookEventTypeName(t));
    }
    return out;
  }
  std::set<std::string> seen;
  for (int i = 0; i < r.event_types_size(); ++i) {
    const std::string& name = r.event_types(i);
    if (!ParseWebhookEventType(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("event_types[", i, "]: unknown event type \"",
                       Echo(name), "\"; known: ", WebhookEventTypeNames()));
    }
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("event_types[", i, "]: \"", name, "\" is named twice"));
    }
    out.push_back(name);
  }
  return out;
}

}  // namespace

absl::StatusOr<v1::Webhook> WebhookOps::CreateWebhook(
    const Caller& caller, const v1::CreateWebhookRequest& r) const {
  auto url = ParseWebhookUrl(r.url());
  if (!url.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("url: ", url.status().message()));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> types, EventTypes(r));
  if (r.description().size() > kMaxDescriptionBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "description: longer than ", kMaxDescriptionBytes, " bytes"));
  }
  if (FindControlChar(r.description())) {
    return absl::InvalidArgumentError(
        absl::StrCat("description: \"", Echo(r.description()),
                     "\" holds a control character"));
  }
  v1::Webhook w;
  w.set_id(NewId("wh"));
  w.set_url(r.url());
  for (std::string& t : types) w.add_event_types(std::move(t));
  ASSIGN_OR_RETURN(*w.mutable_secret(), NewWebhookSecret());
  w.set_created_at(NowUnixSeconds());
  w.set_project(caller.project);
  w.set_description(r.description());
  RETURN_IF_ERROR(deps_.store->InsertWebhook(w, kMaxWebhooksPerProject));
  spdlog::info("webhook {} of project {} -> {}", w.id(), w.project(),
               url->Origin());
  return w;
}

absl::StatusOr<v1::ListWebhooksResponse> WebhookOps::ListWebhooks(
    const Caller& caller, const v1::ListWebhooksRequest& r) const {
  RETURN_IF_ERROR(CheckLimit(r.limit()));
  RETURN_IF_ERROR(CheckIdField("after", r.after(), /*required=*/false));
  ASSIGN_OR_RETURN(auto page, deps_.store->ListWebhooks(caller.project,
                                                        r.limit(), r.after()));
  v1::ListWebhooksResponse out;
  for (auto& w : page.data) *out.add_data() = std::move(w);
  out.set_has_more(page.has_more);
  return out;
}

absl::StatusOr<v1::Webhook> WebhookOps::OwnedWebhook(
    const Caller& caller, const std::string& webhook_id) const {
  RETURN_IF_ERROR(CheckIdField("webhook_id", webhook_id));
  auto w = deps_.store->GetWebhook(webhook_id);
  if (!w.ok()) return NotFoundAs("webhook", webhook_id, w.status());
  RETURN_IF_ERROR(CheckOwner(caller, w->project(), "webhook", webhook_id));
  return w;
}

absl::StatusOr<v1::DeleteWebhookResponse> WebhookOps::DeleteWebhook(
    const Caller& caller, const v1::DeleteWebhookRequest& r) const {
  RETURN_IF_ERROR(OwnedWebhook(caller, r.webhook_id()).status());
  absl::Status st = deps_.store->DeleteWebhook(r.webhook_id());
  if (!st.ok()) return NotFoundAs("webhook", r.webhook_id(), st);
  v1::DeleteWebhookResponse out;
  out.set_id(r.webhook_id());
  out.set_deleted(true);
  return out;
}

absl::StatusOr<v1::ListWebhookDeliveriesResponse>
WebhookOps::ListWebhookDeliveries(
    const Caller& caller, const v1::ListWebhookDeliveriesRequest& r) const {
  RETURN_IF_ERROR(OwnedWebhook(caller, r.webhook_id()).status());
  RETURN_IF_ERROR(CheckLimit(r.limit()));
  RETURN_IF_ERROR(CheckIdField("after", r.after(), /*required=*/false));
  ASSIGN_OR_RETURN(auto page, deps_.store->ListWebhookDeliveries(
                                  r.webhook_id(), r.limit(), r.after()));
  v1::ListWebhookDeliveriesResponse out;
  for (auto& d : page.data) *out.add_data() = std::move(d);
  out.set_has_more(page.has_more);
  return out;
}

}  // namespace lathe
