#include "server/webhooks/dispatcher.h"

#include <httplib.h>
#include <openssl/x509.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/ids.h"
#include "server/webhooks/payload.h"
#include "server/webhooks/signature.h"
#include "server/webhooks/url.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

constexpr size_t kExcerptBytes = 64;  // of a failed answer's body, kept

void SetTimeouts(httplib::Client& client, const WebhookDispatcherOptions& o) {
  auto split = [](absl::Duration d, time_t* sec, time_t* usec) {
    int64_t us = absl::ToInt64Microseconds(d);
    *sec = static_cast<time_t>(us / 1'000'000);
    *usec = static_cast<time_t>(us % 1'000'000);
  };
  time_t sec = 0, usec = 0;
  split(o.connect_timeout, &sec, &usec);
  client.set_connection_timeout(sec, usec);
  split(o.read_timeout, &sec, &usec);
  client.set_read_timeout(sec, usec);
  client.set_write_timeout(sec, usec);
}

}  // namespace

absl::StatusOr<std::unique_ptr<WebhookDispatcher>> WebhookDispatcher::Start(
    store::Store& store, WebhookDispatcherOptions options) {
  if (options.senders < 1) {
    return absl::InvalidArgumentError("webhook senders: at least 1");
  }
  if (options.retry.max_attempts < 1) {
    return absl::InvalidArgumentError("--webhook_max_attempts: at least 1");
  }
  if (!options.ca_file.empty()) {
    std::ifstream in(options.ca_file);
    std::stringstream pem;
    pem << in.rdbuf();
    if (!in || !absl::StrContains(pem.str(), "-----BEGIN CERTIFICATE-----")) {
      return absl::InvalidArgumentError(
          absl::StrCat("--webhook_ca_cert: ", options.ca_file,
                       " is not a readable PEM certificate file"));
    }
  }
  std::unique_ptr<WebhookDispatcher> d(
      new WebhookDispatcher(store, std::move(options)));
  WebhookDispatcher* self = d.get();
  store.SetDeliveryListener([self] { self->Wake(); });
  for (int i = 0; i < d->options_.senders; ++i) {
    d->threads_.emplace_back([self, i] { self->SenderLoop(i); });
  }
  return d;
}

WebhookDispatcher::~WebhookDispatcher() { Stop(); }

void WebhookDispatcher::Wake() {
  absl::MutexLock lock(&mu_);
  ++wakes_;
}

void WebhookDispatcher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    // A send in flight ends now instead of at its timeout.
    for (httplib::Client* client : sending_) {
      if (client != nullptr) client->stop();
    }
  }
  store_.SetDeliveryListener(nullptr);
  for (std::thread& t : threads_) t.join();
}

void WebhookDispatcher::SenderLoop(int index) {
  while (true) {
    int64_t seen = 0;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      seen = wakes_;
    }
    absl::Duration wait = options_.poll_interval;
    std::string id = Claim(&wait);
    if (!id.empty()) {
      Attempt(index, id);
      Release(id);
      continue;
    }
    absl::MutexLock lock(&mu_);
    auto woken = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || wakes_ != seen;
    };
    mu_.AwaitWithTimeout(absl::Condition(&woken), wait);
  }
}

std::string WebhookDispatcher::Claim(absl::Duration* wait) {
  int64_t now_ms = NowUnixMillis();
  // The other senders hold at most senders - 1 deliveries: among that many
  // + 1 due ones, one is free.
  auto due = store_.DueWebhookDeliveries(now_ms, options_.senders);
  if (!due.ok()) {
    spdlog::warn("webhooks: cannot read the outbox: {}",
                 due.status().ToString());
    return "";
  }
  if (due->next_attempt_ms) {
    *wait = std::min(*wait, absl::Milliseconds(*due->next_attempt_ms - now_ms));
  }
  absl::MutexLock lock(&mu_);
  for (const std::string& id : due->ids) {
    if (in_flight_.insert(id).second) return id;
  }
  return "";
}

void WebhookDispatcher::Release(const std::string& delivery_id) {
  absl::MutexLock lock(&mu_);
  in_flight_.erase(delivery_id);
}

std::optional<store::Store::WebhookAttempt> WebhookDispatcher::Post(
    int sender, const store::Store::WebhookSend& send) {
  store::Store::WebhookAttempt outcome;
  const v1::WebhookDelivery& d = send.delivery;
  std::string body = WebhookPayload(d.id(), d.created_at(), d.event_type(),
                                    send.job, send.event);
  auto url = ParseWebhookUrl(send.url);  // checked when registered
  int64_t timestamp = NowUnixSeconds();
  auto signature = SignWebhook(send.secret, d.id(), timestamp, body);
  if (!url.ok() || !signature.ok()) {
    outcome.error =
        std::string((!url.ok() ? url.status() : signature.status()).message());
    return outcome;
  }
  httplib::Client client(url->Origin());
  SetTimeouts(client, options_);
  client.set_url_encode(false);  // printable ASCII, as registered
  client.set_keep_alive(false);
  if (url->scheme == "https") {
    client.enable_server_certificate_verification(true);
    if (!options_.ca_file.empty()) client.set_ca_cert_path(options_.ca_file);
  }
  httplib::Request req;
  req.method = "POST";
  req.path = url->target;
  req.headers = {{"webhook-id", d.id()},
                 {"webhook-timestamp", absl::StrCat(timestamp)},
                 {"webhook-signature", *signature},
                 {"Content-Type", "application/json"},
                 {"User-Agent", "Lathe-Webhooks/1"}};
  req.body = std::move(body);
  std::string excerpt;  // the start of the answer's body, for last_error
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (excerpt.size() < kExcerptBytes) {
      excerpt.append(data, std::min(n, kExcerptBytes - excerpt.size()));
    }
    return true;  // the rest is read and dropped
  };
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return std::nullopt;
    sending_[sender] = &client;
  }
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  bool answered = client.send(req, res, error);
  {
    absl::MutexLock lock(&mu_);
    sending_[sender] = nullptr;
    if (stopping_ && !answered) return std::nullopt;
  }
  outcome.response_code = answered ? res.status : 0;
  if (!answered) {
    outcome.error = absl::StrCat("no answer: ", httplib::to_string(error));
    if (error == httplib::Error::SSLServerVerification) {
      absl::StrAppend(
          &outcome.error, " (",
          X509_verify_cert_error_string(client.get_openssl_verify_result()),
          "; lathed --webhook_ca_cert names a private CA)");
    }
  } else if (outcome.response_code >= 200 && outcome.response_code < 300) {
    outcome.delivered = true;
  } else {
    outcome.error = absl::StrCat("HTTP ", outcome.response_code,
                                 excerpt.empty() ? "" : ": ", Echo(excerpt));
  }
  return outcome;
}

void WebhookDispatcher::Attempt(int sender, const std::string& delivery_id) {
  auto send = store_.LoadWebhookSend(delivery_id);
  if (absl::IsNotFound(send.status())) return;  // deleted with its webhook
  // The outbox was read before this claim: another sender may have sent
  // and released this delivery since. Only a delivery still pending and
  // due is sent, so each attempt goes out once.
  if (send.ok() &&
      (send->delivery.status() != v1::WEBHOOK_DELIVERY_STATUS_PENDING ||
       send->next_attempt_ms > NowUnixMillis())) {
    return;
  }
  std::optional<store::Store::WebhookAttempt> outcome;
  if (send.ok()) {
    outcome = Post(sender, *send);
    if (!outcome) return;  // cut off by Stop: stays pending as it was
  } else {
    outcome.emplace().error = std::string(send.status().message());
  }
  int attempts_made = send.ok() ? send->delivery.attempts() + 1 : 1;
  if (!outcome->delivered) {
    if (auto delay = WebhookRetryDelay(options_.retry, attempts_made)) {
      outcome->next_attempt_ms =
          NowUnixMillis() + absl::ToInt64Milliseconds(*delay);
    }
  }
  absl::Status recorded = store_.RecordWebhookAttempt(delivery_id, *outcome);
  if (!recorded.ok()) {
    spdlog::warn("webhooks: cannot record delivery {}: {}", delivery_id,
                 recorded.ToString());
  }
  if (outcome->delivered) {
    spdlog::info("webhooks: delivered {} (attempt {})", delivery_id,
                 attempts_made);
  } else {
    spdlog::warn("webhooks: delivery {} attempt {} failed: {}; {}", delivery_id,
                 attempts_made, outcome->error,
                 outcome->next_attempt_ms ? "will retry" : "giving up");
  }
  // The other senders' waits may now end sooner (at the retry's time).
  if (outcome->next_attempt_ms) Wake();
}

}  // namespace lathe
