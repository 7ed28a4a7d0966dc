// The Store's webhooks and their deliveries (the outbox): see store.h.
#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/ids.h"
#include "common/status_macros.h"
#include "server/store/store.h"
#include "server/webhooks/event_types.h"

namespace lathe::store {
namespace {

constexpr char kWebhookColumns[] =
    "id, project, url, secret, description, created_at";

// The webhook of the current row of a SELECT of kWebhookColumns, without
// its event types.
v1::Webhook ReadWebhook(const Statement& s) {
  v1::Webhook w;
  w.set_id(s.ColumnText(0));
  w.set_project(s.ColumnText(1));
  w.set_url(s.ColumnText(2));
  w.set_secret(s.ColumnText(3));
  w.set_description(s.ColumnText(4));
  w.set_created_at(s.ColumnInt(5));
  return w;
}

absl::Status AddEventTypes(Database& db, v1::Webhook& w) {
  ASSIGN_OR_RETURN(auto q, db.Prepare("SELECT event_type FROM "
                                      "webhook_event_types WHERE webhook_id = "
                                      "? ORDER BY rowid"));
  q.Bind(1, w.id());
  while (true) {
    ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return absl::OkStatus();
    w.add_event_types(q.ColumnText(0));
  }
}

constexpr char kDeliveryColumns[] =
    "id, webhook_id, job_id, event_job_seq, event_type, created_at, status, "
    "attempts, last_response_code, last_error, next_attempt_ms, delivered_at";

v1::WebhookDelivery ReadDelivery(const Statement& s) {
  v1::WebhookDelivery d;
  d.set_id(s.ColumnText(0));
  d.set_webhook_id(s.ColumnText(1));
  d.set_job_id(s.ColumnText(2));
  d.set_event_id(Store::EventId(d.job_id(), s.ColumnInt(3)));
  d.set_event_type(s.ColumnText(4));
  d.set_created_at(s.ColumnInt(5));
  d.set_status(static_cast<v1::WebhookDeliveryStatus>(s.ColumnInt(6)));
  d.set_attempts(static_cast<int32_t>(s.ColumnInt(7)));
  d.set_last_response_code(static_cast<int32_t>(s.ColumnInt(8)));
  d.set_last_error(s.ColumnText(9));
  if (d.status() == v1::WEBHOOK_DELIVERY_STATUS_PENDING) {
    // Rounded up: "at" is never before the attempt can happen.
    d.set_next_attempt_at((s.ColumnInt(10) + 999) / 1000);
  }
  d.set_delivered_at(s.ColumnInt(11));
  return d;
}

// "msg_" and 24 random base-62 characters, as Standard Webhooks' message
// ids are written.
std::string NewDeliveryId() {
  return absl::StrCat("msg_", absl::string_view(NewId("")).substr(1));
}

}  // namespace

absl::Status Store::InsertWebhook(const v1::Webhook& w, int max_per_project) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(auto count, db_->Prepare("SELECT COUNT(*) FROM webhooks "
                                            "WHERE project = ?"));
  count.Bind(1, w.project());
  RETURN_IF_ERROR(count.Step().status());
  if (count.ColumnInt(0) >= max_per_project) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "max_webhooks_per_project: project ", w.project(), " already has ",
        count.ColumnInt(0), " webhooks; delete one first"));
  }
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(absl::StrCat(
                                  "INSERT INTO webhooks (", kWebhookColumns,
                                  ") VALUES (?,?,?,?,?,?)")));
  stmt.Bind(1, w.id()).Bind(2, w.project()).Bind(3, w.url());
  stmt.Bind(4, w.secret()).Bind(5, w.description()).Bind(6, w.created_at());
  RETURN_IF_ERROR(stmt.Run());
  for (const std::string& type : w.event_types()) {
    ASSIGN_OR_RETURN(auto t, db_->Prepare("INSERT INTO webhook_event_types "
                                          "(webhook_id, event_type) VALUES "
                                          "(?, ?)"));
    t.Bind(1, w.id()).Bind(2, type);
    RETURN_IF_ERROR(t.Run());
  }
  return tx->Commit();
}

absl::StatusOr<v1::Webhook> Store::GetWebhook(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare(absl::StrCat("SELECT ", kWebhookColumns,
                                             " FROM webhooks WHERE id = ?")));
  stmt.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row)
    return absl::NotFoundError(absl::StrCat("no such webhook: ", Echo(id)));
  v1::Webhook w = ReadWebhook(stmt);
  RETURN_IF_ERROR(AddEventTypes(*db_, w));
  return w;
}

absl::StatusOr<Page<v1::Webhook>> Store::ListWebhooks(
    const std::string& project, int limit, const std::string& after) {
  absl::MutexLock lock(&mu_);
  limit = ClampLimit(limit, 20, 100);
  ASSIGN_OR_RETURN(int64_t before_seq, CursorSeq("webhooks", project, after));
  ASSIGN_OR_RETURN(
      auto stmt,
      db_->Prepare(absl::StrCat("SELECT ", kWebhookColumns,
                                " FROM webhooks WHERE seq < ? AND project = ? "
                                "ORDER BY seq DESC LIMIT ?")));
  stmt.Bind(1, before_seq).Bind(2, project);
  stmt.Bind(3, static_cast<int64_t>(limit + 1));
  Page<v1::Webhook> page;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int>(page.data.size()) == limit) {
      page.has_more = true;
      break;
    }
    page.data.push_back(ReadWebhook(stmt));
    page.data.back().clear_secret();
  }
  for (v1::Webhook& w : page.data) RETURN_IF_ERROR(AddEventTypes(*db_, w));
  return page;
}

absl::Status Store::DeleteWebhook(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  for (const char* sql :
       {"DELETE FROM webhook_deliveries WHERE webhook_id = ?",
        "DELETE FROM webhook_event_types WHERE webhook_id = ?",
        "DELETE FROM webhooks WHERE id = ?"}) {
    ASSIGN_OR_RETURN(auto stmt, db_->Prepare(sql));
    stmt.Bind(1, id);
    RETURN_IF_ERROR(stmt.Run());
  }
  if (db_->Changes() == 0) {
    return absl::NotFoundError(absl::StrCat("no such webhook: ", Echo(id)));
  }
  return tx->Commit();
}

absl::Status Store::QueueWebhookDeliveriesLocked(const std::string& job_id,
                                                 int64_t job_seq,
                                                 const v1::JobEvent& event) {
  std::optional<WebhookEventType> type = WebhookEventTypeOf(event);
  if (!type) return absl::OkStatus();
  std::string type_name(WebhookEventTypeName(*type));
  ASSIGN_OR_RETURN(auto subscribed,
                   db_->Prepare("SELECT w.id FROM webhooks w JOIN "
                                "webhook_event_types t ON t.webhook_id = w.id "
                                "WHERE w.project = (SELECT project FROM jobs "
                                "WHERE id = ?) AND t.event_type = ? "
                                "ORDER BY w.seq"));
  subscribed.Bind(1, job_id).Bind(2, type_name);
  std::vector<std::string> webhooks;
  while (true) {
    ASSIGN_OR_RETURN(bool row, subscribed.Step());
    if (!row) break;
    webhooks.push_back(subscribed.ColumnText(0));
  }
  for (const std::string& webhook_id : webhooks) {
    ASSIGN_OR_RETURN(auto stmt,
                     db_->Prepare("INSERT INTO webhook_deliveries (id, "
                                  "webhook_id, job_id, event_job_seq, "
                                  "event_type, created_at, status, "
                                  "next_attempt_ms) VALUES (?,?,?,?,?,?,?,?)"));
    stmt.Bind(1, NewDeliveryId()).Bind(2, webhook_id).Bind(3, job_id);
    stmt.Bind(4, job_seq).Bind(5, type_name).Bind(6, event.created_at());
    stmt.Bind(7, static_cast<int64_t>(v1::WEBHOOK_DELIVERY_STATUS_PENDING));
    stmt.Bind(8, NowUnixMillis());
    RETURN_IF_ERROR(stmt.Run());
  }
  if (!webhooks.empty() && delivery_listener_) delivery_listener_();
  return absl::OkStatus();
}

absl::StatusOr<Page<v1::WebhookDelivery>> Store::ListWebhookDeliveries(
    const std::string& webhook_id, int limit, const std::string& after) {
  absl::MutexLock lock(&mu_);
  limit = ClampLimit(limit, 20, 100);
  int64_t before_seq = INT64_MAX;
  if (!after.empty()) {
    // Another webhook's delivery is as unknown as a missing one.
    ASSIGN_OR_RETURN(auto c, db_->Prepare("SELECT seq FROM webhook_deliveries "
                                          "WHERE id = ? AND webhook_id = ?"));
    c.Bind(1, after).Bind(2, webhook_id);
    ASSIGN_OR_RETURN(bool row, c.Step());
    if (!row) {
      return absl::InvalidArgumentError(
          absl::StrCat("after: unknown cursor ", Echo(after)));
    }
    before_seq = c.ColumnInt(0);
  }
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare(absl::StrCat(
                       "SELECT ", kDeliveryColumns,
                       " FROM webhook_deliveries WHERE webhook_id = ? AND "
                       "seq < ? ORDER BY seq DESC LIMIT ?")));
  stmt.Bind(1, webhook_id).Bind(2, before_seq);
  stmt.Bind(3, static_cast<int64_t>(limit + 1));
  Page<v1::WebhookDelivery> page;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int>(page.data.size()) == limit) {
      page.has_more = true;
      break;
    }
    page.data.push_back(ReadDelivery(stmt));
  }
  return page;
}

absl::StatusOr<Store::DueDeliveries> Store::DueWebhookDeliveries(int64_t now_ms,
                                                                 int limit) {
  absl::MutexLock lock(&mu_);
  DueDeliveries out;
  ASSIGN_OR_RETURN(auto due, db_->Prepare("SELECT id FROM webhook_deliveries "
                                          "WHERE status = ? AND "
                                          "next_attempt_ms <= ? ORDER BY "
                                          "next_attempt_ms, seq LIMIT ?"));
  due.Bind(1, static_cast<int64_t>(v1::WEBHOOK_DELIVERY_STATUS_PENDING));
  due.Bind(2, now_ms).Bind(3, static_cast<int64_t>(limit));
  while (true) {
    ASSIGN_OR_RETURN(bool row, due.Step());
    if (!row) break;
    out.ids.push_back(due.ColumnText(0));
  }
  ASSIGN_OR_RETURN(auto next, db_->Prepare("SELECT MIN(next_attempt_ms) FROM "
                                           "webhook_deliveries WHERE status = "
                                           "? AND next_attempt_ms > ?"));
  next.Bind(1, static_cast<int64_t>(v1::WEBHOOK_DELIVERY_STATUS_PENDING));
  next.Bind(2, now_ms);
  RETURN_IF_ERROR(next.Step().status());
  if (!next.ColumnIsNull(0)) out.next_attempt_ms = next.ColumnInt(0);
  return out;
}

absl::StatusOr<Store::WebhookSend> Store::LoadWebhookSend(
    const std::string& delivery_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare(absl::StrCat(
                       "SELECT ", kDeliveryColumns,
                       ", (SELECT url FROM webhooks WHERE id = webhook_id), "
                       "(SELECT secret FROM webhooks WHERE id = webhook_id), "
                       "(SELECT data FROM events e WHERE e.job_id = "
                       "webhook_deliveries.job_id AND e.job_seq = "
                       "event_job_seq) FROM webhook_deliveries WHERE id = ?")));
  stmt.Bind(1, delivery_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return absl::NotFoundError(
        absl::StrCat("no such webhook delivery: ", Echo(delivery_id)));
  }
  WebhookSend send;
  send.delivery = ReadDelivery(stmt);
  send.next_attempt_ms = stmt.ColumnInt(10);
  send.url = stmt.ColumnText(12);
  send.secret = stmt.ColumnText(13);
  if (!send.event.ParseFromString(stmt.ColumnBlob(14))) {
    return absl::DataLossError(
        absl::StrCat("delivery ", delivery_id, ": corrupt or missing event"));
  }
  send.event.set_id(send.delivery.event_id());
  ASSIGN_OR_RETURN(send.job, LoadJob(send.delivery.job_id()));
  return send;
}

absl::Status Store::RecordWebhookAttempt(const std::string& delivery_id,
                                         const WebhookAttempt& a) {
  absl::MutexLock lock(&mu_);
  v1::WebhookDeliveryStatus status =
      a.delivered         ? v1::WEBHOOK_DELIVERY_STATUS_DELIVERED
      : a.next_attempt_ms ? v1::WEBHOOK_DELIVERY_STATUS_PENDING
                          : v1::WEBHOOK_DELIVERY_STATUS_FAILED;
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("UPDATE webhook_deliveries SET attempts = "
                                "attempts + 1, last_response_code = ?, "
                                "last_error = ?, status = ?, "
                                "next_attempt_ms = ?, delivered_at = ? "
                                "WHERE id = ?"));
  stmt.Bind(1, static_cast<int64_t>(a.response_code)).Bind(2, a.error);
  stmt.Bind(3, static_cast<int64_t>(status));
  stmt.Bind(4, a.next_attempt_ms.value_or(0));
  stmt.Bind(5, a.delivered ? NowUnixSeconds() : int64_t{0});
  stmt.Bind(6, delivery_id);
  return stmt.Run();
}

void Store::SetDeliveryListener(std::function<void()> listener) {
  absl::MutexLock lock(&mu_);
  delivery_listener_ = std::move(listener);
}

}  // namespace lathe::store
