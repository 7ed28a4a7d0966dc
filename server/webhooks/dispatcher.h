// Sends webhook deliveries from the store's outbox: a few sender threads in
// lathed, never on a job's or a call's path. Each takes a due pending
// delivery, POSTs its signed payload (connect and read timeouts; https
// verifies the server's certificate against the system's CAs or ca_file),
// and records the attempt: any 2xx answer delivers it, anything else (an
// HTTP error, a redirect, a timeout, a refused connection) is retried as
// WebhookRetryDelay says, and after the last attempt it is failed. The
// deliveries are pending in SQLite until then, so a restarted lathed goes
// on where the last one stopped (a delivery cut off mid-send is sent again
// with the same id: receivers drop repeats by webhook-id).
//
// Thread-safe. Stop() (or the destructor) ends the threads promptly, also
// aborting sends in flight.
#ifndef LATHE_SERVER_WEBHOOKS_DISPATCHER_H_
#define LATHE_SERVER_WEBHOOKS_DISPATCHER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/store.h"
#include "server/webhooks/retry.h"

namespace httplib {
class Client;
}

namespace lathe {

struct WebhookDispatcherOptions {
  WebhookRetryOptions retry;
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration read_timeout = absl::Seconds(15);
  // PEM CA(s) that https receivers' certificates must chain to; empty: the
  // system's.
  std::string ca_file;
  int senders = 4;  // deliveries sent at once
  // How often the outbox is read when nothing wakes the senders (the store
  // wakes them as deliveries are queued).
  absl::Duration poll_interval = absl::Seconds(1);
};

class WebhookDispatcher {
 public:
  // Starts the senders over `store`, which must outlive this.
  // INVALID_ARGUMENT (naming --webhook_ca_cert) for an unreadable CA file;
  // INVALID_ARGUMENT for senders < 1 or max_attempts < 1.
  static absl::StatusOr<std::unique_ptr<WebhookDispatcher>> Start(
      store::Store& store, WebhookDispatcherOptions options);
  ~WebhookDispatcher();

  // New deliveries may be due: senders look now. Cheap; never calls into
  // the store (so the store's listener may call it).
  void Wake();
  // Ends the senders; a send in flight is aborted and stays pending.
  void Stop();

 private:
  WebhookDispatcher(store::Store& store, WebhookDispatcherOptions options)
      : store_(store),
        options_(std::move(options)),
        sending_(options_.senders, nullptr) {}

  void SenderLoop(int index);
  // Claims a due delivery no other sender holds; empty if none (then
  // `wait` is how long to sleep at most).
  std::string Claim(absl::Duration* wait);
  // Sends `delivery_id` once and records the outcome.
  void Attempt(int sender, const std::string& delivery_id);
  // POSTs the signed payload as sender `sender`: the outcome (with no
  // retry time yet), or nullopt if Stop cut it off.
  std::optional<store::Store::WebhookAttempt> Post(
      int sender, const store::Store::WebhookSend& send);
  void Release(const std::string& delivery_id);

  store::Store& store_;
  const WebhookDispatcherOptions options_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t wakes_ ABSL_GUARDED_BY(mu_) = 0;  // Wake() calls so far
  absl::flat_hash_set<std::string> in_flight_ ABSL_GUARDED_BY(mu_);
  // Each sender's client while it sends (to abort it on Stop); else null.
  std::vector<httplib::Client*> sending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_WEBHOOKS_DISPATCHER_H_
