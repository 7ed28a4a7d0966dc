#include "server/event_feed.h"

#include "absl/strings/str_cat.h"
#include "common/job_state.h"
#include "common/status_macros.h"

namespace lathe {

EventFeed::EventFeed(store::Store& store, const Authenticator& auth,
                     EventFeedOptions options)
    : store_(store), auth_(auth), options_(options) {
  store_.SetEventListener(
      [this](const std::string& job_id) { OnEvent(job_id); });
  thread_ = std::thread([this] { Run(); });
}

EventFeed::~EventFeed() {
  store_.SetEventListener(nullptr);
  {
    absl::MutexLock lock(&mu_);
    exiting_ = true;
  }
  thread_.join();
}

absl::StatusOr<std::unique_ptr<EventFeed::Follow>> EventFeed::Open(
    const Caller& caller, const std::string& job_id, const std::string& after,
    std::weak_ptr<Subscriber> subscriber) {
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  RETURN_IF_ERROR(CheckOwner(caller, job.project(), "job", job_id));
  if (!after.empty()) {
    RETURN_IF_ERROR(store_.ListEvents(job_id, after, 1).status());
  }
  std::unique_ptr<Follow> follow(
      new Follow(*this, caller, job_id, after, std::move(subscriber)));
  absl::MutexLock lock(&mu_);
  by_job_[job_id].insert(follow.get());
  return follow;
}

void EventFeed::Stop() {
  stopped_ = true;
  absl::MutexLock lock(&mu_);
  for (const auto& [job, follows] : by_job_) {
    ready_.insert(follows.begin(), follows.end());
  }
}

void EventFeed::OnEvent(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_job_.find(job_id);
  if (it == by_job_.end()) return;
  for (Follow* f : it->second) {
    f->news_ = true;
    ready_.insert(f);
  }
}

void EventFeed::Run() {
  absl::Time next_check = absl::Now() + options_.check_interval;
  while (true) {
    // Strong references, taken under the lock: a subscriber that finishes
    // meanwhile stays alive until its Wake returns.
    std::vector<std::shared_ptr<Subscriber>> wake;
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return exiting_ || !ready_.empty();
      };
      mu_.AwaitWithDeadline(absl::Condition(&woken), next_check);
      if (exiting_) return;
      if (absl::Now() >= next_check) {
        for (const auto& [job, follows] : by_job_) {
          ready_.insert(follows.begin(), follows.end());
        }
        next_check = absl::Now() + options_.check_interval;
      }
      for (Follow* f : ready_) {
        if (auto s = f->subscriber_.lock()) wake.push_back(std::move(s));
      }
      ready_.clear();
    }
    for (const auto& s : wake) s->Wake();
  }
}

void EventFeed::Remove(Follow* follow) {
  absl::MutexLock lock(&mu_);
  ready_.erase(follow);
  auto it = by_job_.find(follow->job_id_);
  if (it == by_job_.end()) return;
  it->second.erase(follow);
  if (it->second.empty()) by_job_.erase(it);
}

EventFeed::Follow::Follow(EventFeed& feed, Caller caller, std::string job_id,
                          std::string after,
                          std::weak_ptr<Subscriber> subscriber)
    : feed_(feed),
      caller_(std::move(caller)),
      job_id_(std::move(job_id)),
      opened_(absl::Now()),
      subscriber_(std::move(subscriber)),
      cursor_(std::move(after)) {}

EventFeed::Follow::~Follow() { feed_.Remove(this); }

absl::Status EventFeed::Follow::Check() const {
  if (feed_.stopped_) {
    return absl::UnavailableError(
        "lathed is shutting down; re-attach with the last event id");
  }
  if (absl::Now() - opened_ >= feed_.options_.max_follow) {
    return absl::UnavailableError(absl::StrCat(
        "this stream has been open for ",
        absl::FormatDuration(feed_.options_.max_follow),
        " (lathed --max_stream_seconds); re-attach with the last event id"));
  }
  return feed_.auth_.Recheck(caller_);
}

absl::StatusOr<EventFeed::Follow::Batch> EventFeed::Follow::Next() {
  RETURN_IF_ERROR(Check());
  {
    absl::MutexLock lock(&feed_.mu_);
    if (!news_) return Batch{};
    news_ = false;
  }
  // The status before the events: a final status's event is written in
  // the same transaction, so it is in this page or a later one.
  ASSIGN_OR_RETURN(v1::Job job, feed_.store_.GetJob(job_id_));
  ASSIGN_OR_RETURN(auto page, feed_.store_.ListEvents(
                                  job_id_, cursor_, feed_.options_.page_size));
  Batch batch;
  batch.finished = IsTerminal(job.status()) && page.data.empty();
  for (v1::JobEvent& e : page.data) {
    v1::WatchJobResponse u;
    if (e.status() != v1::JOB_STATUS_UNSPECIFIED) {
      ASSIGN_OR_RETURN(*u.mutable_job(), feed_.store_.GetJob(job_id_));
      if (feed_.options_.present) RETURN_IF_ERROR(feed_.options_.present(*u.mutable_job()));
    }
    cursor_ = e.id();
    *u.mutable_event() = std::move(e);
    batch.updates.push_back(std::move(u));
  }
  // Read on until a page comes back empty: more may have been written
  // since this one.
  if (!batch.updates.empty()) {
    absl::MutexLock lock(&feed_.mu_);
    news_ = true;
  }
  return batch;
}

void EventFeed::Follow::WakeIfNews() {
  absl::MutexLock lock(&feed_.mu_);
  if (news_) feed_.ready_.insert(this);
}

}  // namespace lathe
