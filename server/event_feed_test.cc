#include "server/event_feed.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "common/ids.h"

namespace lathe {
namespace {

// Counts its wake-ups.
class CountingSubscriber : public EventFeed::Subscriber {
 public:
  void Wake() override {
    absl::MutexLock lock(&mu_);
    ++wakes_;
  }
  int wakes() {
    absl::MutexLock lock(&mu_);
    return wakes_;
  }
  // Waits up to `timeout` for more than `n` wake-ups.
  bool WokenMoreThan(int n, absl::Duration timeout = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    auto more = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wakes_ > n; };
    return mu_.AwaitWithTimeout(absl::Condition(&more), timeout);
  }

 private:
  absl::Mutex mu_;
  int wakes_ ABSL_GUARDED_BY(mu_) = 0;
};

class EventFeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = *store::Store::Open(":memory:");
    auth_ = std::make_unique<Authenticator>(*store_, "wt-token");
    key_ = *CreateApiKey(*store_, "p", "user", "");
    for (const char* id : {"ftjob-a", "ftjob-b"}) {
      v1::Job j;
      j.set_id(id);
      j.set_status(v1::JOB_STATUS_QUEUED);
      j.set_project("p");
      j.set_created_at(NowUnixSeconds());
      ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
    }
  }

  // The holder of `key`, as the services authenticate it.
  Caller CallerOf(const v1::ApiKey& key) {
    return *auth_->UserWithKey(key.secret());
  }

  std::unique_ptr<EventFeed> NewFeed(EventFeedOptions options) {
    return std::make_unique<EventFeed>(*store_, *auth_, options);
  }

  void Metrics(const std::string& job_id, int step) {
    v1::JobEvent e;
    e.set_type("metrics");
    e.mutable_metrics()->set_step(step);
    ASSERT_TRUE(store_->AppendEvent(job_id, e, 1, step).ok());
  }

  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Authenticator> auth_;
  v1::ApiKey key_;
};

TEST_F(EventFeedTest, OnlyItsOwnJobsEventsWakeAFollow) {
  EventFeedOptions options;
  options.check_interval = absl::Hours(1);  // no periodic wake-ups
  auto feed = NewFeed(options);
  auto sub = std::make_shared<CountingSubscriber>();
  auto follow = feed->Open(CallerOf(key_), "ftjob-a", "", sub);
  ASSERT_TRUE(follow.ok()) << follow.status();
  (*follow)->WakeIfNews();
  ASSERT_TRUE(sub->WokenMoreThan(0));
  auto first = (*follow)->Next();
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->updates.size(), 2u);  // created, queued
  EXPECT_EQ(first->updates[0].event().id(), "ftevent-a-1");
  EXPECT_EQ(first->updates[1].event().id(), "ftevent-a-2");
  EXPECT_EQ(first->updates[0].job().id(), "ftjob-a");  // a status event
  auto empty = (*follow)->Next();  // read on until a page comes back empty
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->updates.empty());
  EXPECT_FALSE(empty->finished);
  (*follow)->WakeIfNews();  // nothing new: no wake-up

  for (int step = 1; step <= 50; ++step) Metrics("ftjob-b", step);
  EXPECT_FALSE(sub->WokenMoreThan(1, absl::Milliseconds(200)));
  EXPECT_EQ(sub->wakes(), 1);

  Metrics("ftjob-a", 1);
  ASSERT_TRUE(sub->WokenMoreThan(1));
  auto next = (*follow)->Next();
  ASSERT_TRUE(next.ok());
  ASSERT_EQ(next->updates.size(), 1u);
  EXPECT_EQ(next->updates[0].event().id(), "ftevent-a-3");
  EXPECT_FALSE(next->updates[0].has_job());  // not a status change
}

TEST_F(EventFeedTest, AFollowEndsAfterItsJobsLastEvent) {
  auto feed = NewFeed({});
  auto sub = std::make_shared<CountingSubscriber>();
  auto follow = feed->Open(CallerOf(key_), "ftjob-a", "ftevent-a-2", sub);
  ASSERT_TRUE(follow.ok()) << follow.status();
  store::TransitionUpdate u;
  ASSERT_TRUE(store_
                  ->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_CANCELLED, std::nullopt, u)
                  .ok());
  auto last = (*follow)->Next();
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->updates.size(), 1u);
  EXPECT_EQ(last->updates[0].job().status(), v1::JOB_STATUS_CANCELLED);
  EXPECT_FALSE(last->finished);
  auto end = (*follow)->Next();
  ASSERT_TRUE(end.ok());
  EXPECT_TRUE(end->updates.empty());
  EXPECT_TRUE(end->finished);
}

TEST_F(EventFeedTest, ChecksTheKeyTheAgeAndTheFeedOnEveryWakeUp) {
  EventFeedOptions options;
  options.check_interval = absl::Milliseconds(20);
  auto feed = NewFeed(options);
  auto sub = std::make_shared<CountingSubscriber>();
  auto follow = feed->Open(CallerOf(key_), "ftjob-a", "", sub);
  ASSERT_TRUE(follow.ok());
  // Periodic wake-ups, with no event.
  ASSERT_TRUE(sub->WokenMoreThan(2));
  EXPECT_TRUE((*follow)->Check().ok());
  ASSERT_TRUE(store_->RevokeApiKey(key_.id()).ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*follow)->Check()));
  EXPECT_TRUE(absl::IsUnauthenticated((*follow)->Next().status()));

  auto other = *CreateApiKey(*store_, "p", "user", "");
  auto second = feed->Open(CallerOf(other), "ftjob-b", "", sub);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE((*second)->Check().ok());
  feed->Stop();
  absl::Status stopped = (*second)->Check();
  EXPECT_TRUE(absl::IsUnavailable(stopped)) << stopped;
  EXPECT_TRUE(absl::StrContains(stopped.message(), "re-attach")) << stopped;
}

TEST_F(EventFeedTest, AFollowOlderThanMaxFollowEnds) {
  EventFeedOptions options;
  options.max_follow = absl::Milliseconds(50);
  auto feed = NewFeed(options);
  auto follow = feed->Open(CallerOf(key_), "ftjob-a", "",
                           std::make_shared<CountingSubscriber>());
  ASSERT_TRUE(follow.ok());
  EXPECT_TRUE((*follow)->Check().ok());
  absl::SleepFor(absl::Milliseconds(60));
  absl::Status old = (*follow)->Next().status();
  EXPECT_TRUE(absl::IsUnavailable(old)) << old;
  EXPECT_TRUE(absl::StrContains(old.message(), "--max_stream_seconds")) << old;
}

TEST_F(EventFeedTest, OpenRefusesOtherProjectsJobsAndBadCursors) {
  auto feed = NewFeed({});
  auto sub = std::make_shared<CountingSubscriber>();
  auto stranger = *CreateApiKey(*store_, "q", "user", "");
  auto foreign = feed->Open(CallerOf(stranger), "ftjob-a", "", sub).status();
  auto missing = feed->Open(CallerOf(stranger), "ftjob-zz", "", sub).status();
  EXPECT_TRUE(absl::IsNotFound(foreign)) << foreign;
  EXPECT_EQ(foreign.code(), missing.code());
  auto cursor =
      feed->Open(CallerOf(key_), "ftjob-a", "ftevent-b-1", sub).status();
  EXPECT_TRUE(absl::IsInvalidArgument(cursor)) << cursor;
}

}  // namespace
}  // namespace lathe
