// Following a job's events, free of any transport. A Follow is one caller's
// cursor on one job. The feed wakes a follow's subscriber when that job has
// new events (the store tells it, per job) and once every check interval
// (to re-check the key, the follow's age and shutdown), all on one thread
// of its own: an idle follow holds no thread, and another job's events cost
// it nothing.
//
// Thread-safe. Lock order: the store's lock, then the feed's (the store's
// event listener takes the feed's lock); the feed never calls the store or
// a subscriber with its own lock held.
#ifndef LATHE_SERVER_EVENT_FEED_H_
#define LATHE_SERVER_EVENT_FEED_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "server/auth.h"
#include "server/store/store.h"

namespace lathe {

struct EventFeedOptions {
  // A follow ends (UNAVAILABLE, "re-attach") after this long, so that no
  // stream lives for ever (lathed --max_stream_seconds).
  absl::Duration max_follow = absl::Hours(1);
  // Every follow is woken this often to re-check its key and age.
  absl::Duration check_interval = absl::Seconds(1);
  int page_size = 100;  // events per Next()
  // Fills what a job shows beyond its stored record (its queue position)
  // in each status update; none when empty.
  std::function<absl::Status(v1::Job&)> present;
};

class EventFeed {
 public:
  // Told "call Next() or Check()". Wake runs on the feed's thread, with no
  // lock of the feed's held; it must not block for long, as every
  // follow's wake-ups share that thread.
  class Subscriber {
   public:
    virtual ~Subscriber() = default;
    virtual void Wake() = 0;
  };
  class Follow;

  // `store` and `auth` must outlive the feed. Becomes the store's event
  // listener and starts the feed's thread.
  EventFeed(store::Store& store, const Authenticator& auth,
            EventFeedOptions options);
  // REQUIRES: every Follow of this feed has been destroyed.
  ~EventFeed();
  EventFeed(const EventFeed&) = delete;
  EventFeed& operator=(const EventFeed&) = delete;

  // Opens the follow of job `job_id` for `caller`, from the event after
  // `after` ("" = from the first). The feed holds `subscriber` weakly and
  // wakes it once WakeIfNews() is first called.
  // NOT_FOUND (no such job, or another project's), INVALID_ARGUMENT
  // (`after` is not one of the job's event ids).
  absl::StatusOr<std::unique_ptr<Follow>> Open(
      const Caller& caller, const std::string& job_id, const std::string& after,
      std::weak_ptr<Subscriber> subscriber);

  // Ends every follow, for shutdown: each one's next Check() or Next() is
  // UNAVAILABLE. Wakes them all now.
  void Stop();

 private:
  void OnEvent(const std::string& job_id);
  void Run();
  void Remove(Follow* follow);

  // Constant after construction.
  store::Store& store_;
  const Authenticator& auth_;
  const EventFeedOptions options_;

  std::atomic<bool> stopped_{false};
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<Follow*>> by_job_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Follow*> ready_ ABSL_GUARDED_BY(mu_);  // to wake now
  bool exiting_ ABSL_GUARDED_BY(mu_) = false;                // the thread ends
  std::thread thread_;
};

// One caller's cursor on one job. Destroying it ends its wake-ups.
class EventFeed::Follow {
 public:
  ~Follow();
  Follow(const Follow&) = delete;
  Follow& operator=(const Follow&) = delete;

  struct Batch {
    // Oldest first; a status change comes with the job as it is now.
    std::vector<v1::WatchJobResponse> updates;
    // The job has ended and every one of its events has been returned.
    bool finished = false;
  };
  // Check(), then, if the job may have news, the events after the cursor
  // (up to a page), moving the cursor past them. Empty when nothing is new.
  // Errors end the follow: Check()'s, or the store's.
  // REQUIRES: not called concurrently with itself or Check().
  absl::StatusOr<Batch> Next();
  // UNAUTHENTICATED once the key is revoked; UNAVAILABLE once the feed is
  // stopped or the follow is older than max_follow (the message says to
  // re-attach with the last event id).
  absl::Status Check() const;
  // Wakes the subscriber soon if the job may have events not yet read
  // (always, before the first Next()).
  void WakeIfNews();

 private:
  friend class EventFeed;
  Follow(EventFeed& feed, Caller caller, std::string job_id, std::string after,
         std::weak_ptr<Subscriber> subscriber);

  // Constant after construction.
  EventFeed& feed_;
  const Caller caller_;
  const std::string job_id_;
  const absl::Time opened_;
  const std::weak_ptr<Subscriber> subscriber_;

  std::string cursor_;  // only Next() uses it
  bool news_ ABSL_GUARDED_BY(feed_.mu_) = true;
};

}  // namespace lathe

#endif  // LATHE_SERVER_EVENT_FEED_H_
