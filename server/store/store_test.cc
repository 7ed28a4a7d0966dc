#include "server/store/store.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/ids.h"

namespace lathe::store {
namespace {

namespace fs = std::filesystem;

v1::File MakeFile(const std::string& id) {
  v1::File f;
  f.set_id(id);
  f.set_created_at(NowUnixSeconds());
  f.set_filename("train.jsonl");
  f.set_purpose("fine-tune");
  f.set_bytes(10);
  f.set_sha256(std::string(64, 'a'));
  f.set_line_count(3);
  f.set_format("chat");
  return f;
}

v1::Job MakeJob(const std::string& id) {
  v1::Job j;
  j.set_id(id);
  j.set_status(v1::JOB_STATUS_QUEUED);
  j.set_model("tiny");
  j.set_training_file("file-1");
  j.set_created_at(NowUnixSeconds());
  return j;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Store::Open(":memory:");
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }
  // Creates `job`, first storing its training file if the test has not.
  absl::StatusOr<Store::Created> CreateJob(const v1::Job& job,
                                           const std::string& key,
                                           const std::string& fingerprint) {
    if (!store_->GetFile(job.training_file()).ok()) {
      v1::File f = MakeFile(job.training_file());
      f.set_project(job.project());
      if (absl::Status st = store_->InsertFile(f); !st.ok()) return st;
    }
    return store_->CreateJob(job, key, fingerprint);
  }

  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, FilesRoundTripAndPage) {
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store_->InsertFile(MakeFile("file-" + std::to_string(i))).ok());
  }
  EXPECT_TRUE(absl::IsAlreadyExists(store_->InsertFile(MakeFile("file-0"))));
  auto f = store_->GetFile("file-3");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->line_count(), 3);
  EXPECT_TRUE(absl::IsNotFound(store_->GetFile("file-9").status()));

  auto p1 = store_->ListFiles("default", 2, "", "");
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->data.size(), 2u);
  EXPECT_EQ(p1->data[0].id(), "file-4");  // newest first
  EXPECT_TRUE(p1->has_more);
  auto p2 = store_->ListFiles("default", 2, p1->data[1].id(), "");
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->data[0].id(), "file-2");
  auto p3 = store_->ListFiles("default", 2, p2->data[1].id(), "");
  ASSERT_TRUE(p3.ok());
  ASSERT_EQ(p3->data.size(), 1u);
  EXPECT_EQ(p3->data[0].id(), "file-0");
  EXPECT_FALSE(p3->has_more);
  EXPECT_TRUE(absl::IsInvalidArgument(store_->ListFiles("default", 2, "file-x", "").status()));
}

TEST_F(StoreTest, IdempotentCreate) {
  auto a = CreateJob(MakeJob("ftjob-a"), "key-1", "fp-1");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->created);
  auto again = CreateJob(MakeJob("ftjob-b"), "key-1", "fp-1");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->job.id(), "ftjob-a");
  auto other = CreateJob(MakeJob("ftjob-c"), "key-1", "fp-2");
  EXPECT_TRUE(absl::IsAlreadyExists(other.status())) << other.status();
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("ftjob-c").status()));
  // Without a key every create is a new job.
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-d"), "", "fp-1").ok());
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-e"), "", "fp-1").ok());
}

TEST_F(StoreTest, TransitionIsCompareAndSet) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  TransitionUpdate u;
  u.attempt = 1;
  u.worker_id = "w1";
  auto running = store_->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                                    v1::JOB_STATUS_RUNNING, std::nullopt, u);
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->status(), v1::JOB_STATUS_RUNNING);
  EXPECT_EQ(running->attempt(), 1);
  EXPECT_GT(running->started_at(), 0);
  // A lost race: the job is no longer queued.
  auto lost = store_->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_RUNNING, std::nullopt, u);
  EXPECT_TRUE(absl::IsFailedPrecondition(lost.status())) << lost.status();
  // A stale attempt is refused.
  auto stale = store_->Transition("ftjob-a", v1::JOB_STATUS_RUNNING,
                                  v1::JOB_STATUS_SUCCEEDED, 7, {});
  EXPECT_TRUE(absl::IsFailedPrecondition(stale.status()));
  // Not an allowed transition at all.
  auto bad = store_->Transition("ftjob-a", v1::JOB_STATUS_RUNNING,
                                v1::JOB_STATUS_VALIDATING_FILES, 1, {});
  EXPECT_TRUE(absl::IsFailedPrecondition(bad.status()));
  EXPECT_TRUE(absl::IsNotFound(store_->Transition("ftjob-zz", v1::JOB_STATUS_QUEUED,
                                                  v1::JOB_STATUS_RUNNING,
                                                  std::nullopt, {})
                                   .status()));
  TransitionUpdate done;
  done.fine_tuned_model = "ft:tiny:x";
  done.trained_tokens = 1234;
  auto ok = store_->Transition("ftjob-a", v1::JOB_STATUS_RUNNING,
                               v1::JOB_STATUS_SUCCEEDED, 1, done);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->fine_tuned_model(), "ft:tiny:x");
  EXPECT_EQ(ok->trained_tokens(), 1234);
  EXPECT_GT(ok->finished_at(), 0);
  // Every transition is an event, after the creation and queued events.
  auto events = store_->ListEvents("ftjob-a", "", 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->data.size(), 4u);
  EXPECT_EQ(events->data[2].status(), v1::JOB_STATUS_RUNNING);
  EXPECT_EQ(events->data[3].status(), v1::JOB_STATUS_SUCCEEDED);
}

TEST_F(StoreTest, QueueOrder) {
  for (const char* id : {"ftjob-1", "ftjob-2", "ftjob-3"}) {
    ASSERT_TRUE(CreateJob(MakeJob(id), "", "").ok());
  }
  auto in = store_->ReadSchedulerInput();
  ASSERT_TRUE(in.ok());
  ASSERT_EQ(in->queued.size(), 3u);
  EXPECT_EQ(in->queued[0].job_id, "ftjob-1");
  EXPECT_TRUE(in->running_per_project.empty());
  ASSERT_TRUE(store_
                  ->Transition("ftjob-1", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt, {})
                  .ok());
  in = store_->ReadSchedulerInput();
  ASSERT_EQ(in->queued.size(), 2u);
  EXPECT_EQ(in->queued[0].job_id, "ftjob-2");
  EXPECT_EQ(in->running_per_project.at("default"), 1);
}

TEST_F(StoreTest, AGangIsQueuedWithItsDevicesAndRunsAsThatManyJobs) {
  v1::Job gang = MakeJob("ftjob-gang");
  gang.set_devices(3);
  ASSERT_TRUE(CreateJob(gang, "", "").ok());
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-one"), "", "").ok());  // devices unset
  auto in = store_->ReadSchedulerInput();
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_EQ(in->queued.size(), 2u);
  EXPECT_EQ(in->queued[0].devices, 3);
  EXPECT_EQ(in->queued[1].devices, 1);
  for (const char* id : {"ftjob-gang", "ftjob-one"}) {
    ASSERT_TRUE(store_
                    ->Transition(id, v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_RUNNING, std::nullopt, {})
                    .ok());
  }
  in = store_->ReadSchedulerInput();
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->running_per_project.at("default"), 4);  // fair share: 3 + 1
}

TEST_F(StoreTest, CreateJobChecksItsFilesInItsOwnTransaction) {
  v1::Job j = MakeJob("ftjob-a");
  j.set_training_file("file-missing");
  auto st = store_->CreateJob(j, "key", "fp");
  EXPECT_TRUE(absl::IsNotFound(st.status())) << st.status();
  EXPECT_EQ(st.status().message(), "training_file: no such file file-missing");
  // Another project's file is as missing.
  v1::File theirs = MakeFile("file-theirs");
  theirs.set_project("other");
  ASSERT_TRUE(store_->InsertFile(theirs).ok());
  j.set_training_file("file-theirs");
  st = store_->CreateJob(j, "key", "fp");
  EXPECT_EQ(st.status().message(), "training_file: no such file file-theirs");
  ASSERT_TRUE(store_->InsertFile(MakeFile("file-mine")).ok());
  j.set_training_file("file-mine");
  j.set_validation_file("file-theirs");
  st = store_->CreateJob(j, "key", "fp");
  EXPECT_EQ(st.status().message(), "validation_file: no such file file-theirs");
  // Nothing was stored, and the idempotency key is still free.
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("ftjob-a").status()));
  j.clear_validation_file();
  auto created = store_->CreateJob(j, "key", "fp");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created);
  // Once a job uses the file, deleting it is refused (and the other way
  // round: see DeleteFileRefusedWhileAJobUsesIt).
  EXPECT_TRUE(
      absl::IsFailedPrecondition(store_->DeleteFile("file-mine").status()));
}

TEST_F(StoreTest, AQueuedJobIsWrittenWithBothOfItsEventsAtOnce) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  auto events = store_->ListEvents("ftjob-a", "", 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->data.size(), 2u);
  EXPECT_EQ(events->data[0].status(), v1::JOB_STATUS_VALIDATING_FILES);
  EXPECT_EQ(events->data[1].status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(store_->GetJob("ftjob-a")->status(), v1::JOB_STATUS_QUEUED);
}

TEST_F(StoreTest, AnotherProjectsIdIsAnUnknownCursor) {
  v1::File theirs = MakeFile("file-theirs");
  theirs.set_project("other");
  ASSERT_TRUE(store_->InsertFile(theirs).ok());
  v1::Job j = MakeJob("ftjob-theirs");
  j.set_project("other");
  j.set_training_file("file-theirs");
  ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  auto files = store_->ListFiles("default", 10, "file-theirs", "");
  auto missing_file = store_->ListFiles("default", 10, "file-nope", "");
  EXPECT_TRUE(absl::IsInvalidArgument(files.status()));
  EXPECT_EQ(files.status().message(), "after: unknown cursor file-theirs");
  EXPECT_EQ(missing_file.status().message(), "after: unknown cursor file-nope");
  auto jobs = store_->ListJobs("default", 10, "ftjob-theirs",
                               v1::JOB_STATUS_UNSPECIFIED);
  EXPECT_TRUE(absl::IsInvalidArgument(jobs.status()));
  EXPECT_EQ(jobs.status().message(), "after: unknown cursor ftjob-theirs");
  // The owner pages with it.
  EXPECT_TRUE(
      store_->ListJobs("other", 10, "ftjob-theirs", v1::JOB_STATUS_UNSPECIFIED)
          .ok());
}

TEST_F(StoreTest, FailuresAreCountedAndAResumeRequestEndsWithThePause) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  ASSERT_TRUE(store_
                  ->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 1})
                  .ok());
  store::TransitionUpdate failed;
  failed.count_failure = true;
  auto j = store_->Transition("ftjob-a", v1::JOB_STATUS_RUNNING,
                              v1::JOB_STATUS_QUEUED, 1, failed);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->failed_attempts(), 1);
  ASSERT_TRUE(store_
                  ->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 2})
                  .ok());
  ASSERT_TRUE(store_
                  ->Transition("ftjob-a", v1::JOB_STATUS_RUNNING,
                               v1::JOB_STATUS_PAUSED, std::nullopt, {})
                  .ok());
  EXPECT_EQ(store_->GetJob("ftjob-a")->failed_attempts(),
            1);  // a pause is no failure
  // Only on the paused attempt.
  EXPECT_TRUE(absl::IsFailedPrecondition(
      store_->SetResumeRequested("ftjob-a", 1, true, "resume").status()));
  auto r = store_->SetResumeRequested("ftjob-a", 2, true, "resume");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->resume_requested());
  int events =
      static_cast<int>(store_->ListEvents("ftjob-a", "", 100)->data.size());
  ASSERT_TRUE(store_->SetResumeRequested("ftjob-a", 2, true, "resume").ok());
  EXPECT_EQ(store_->ListEvents("ftjob-a", "", 100)->data.size(),
            events);  // no change, no event
  j = store_->Transition("ftjob-a", v1::JOB_STATUS_PAUSED,
                         v1::JOB_STATUS_QUEUED, 2, {});
  ASSERT_TRUE(j.ok());
  EXPECT_FALSE(j->resume_requested());
}

TEST_F(StoreTest, EventsDeduplicateAndPage) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  v1::JobEvent e;
  e.set_type("metrics");
  e.set_level("info");
  for (int seq = 1; seq <= 5; ++seq) {
    e.mutable_metrics()->set_step(seq);
    ASSERT_TRUE(store_->AppendEvent("ftjob-a", e, 1, seq).ok());
  }
  // A repeated report of seq 3 is not stored twice.
  EXPECT_TRUE(absl::IsAlreadyExists(store_->AppendEvent("ftjob-a", e, 1, 3).status()));
  auto all = store_->ListEvents("ftjob-a", "", 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->data.size(), 7u);  // created + queued + 5 metrics
  auto page = store_->ListEvents("ftjob-a", all->data[2].id(), 2);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->data.size(), 2u);
  EXPECT_EQ(page->data[0].id(), all->data[3].id());
  EXPECT_TRUE(page->has_more);
  EXPECT_TRUE(absl::IsInvalidArgument(store_->ListEvents("ftjob-a", "bogus", 2).status()));
  EXPECT_TRUE(absl::IsNotFound(store_->ListEvents("ftjob-zz", "", 2).status()));
}

// Appends metrics events to jobs "ftjob-a" and "ftjob-b" in turn.
void InterleaveEvents(Store& store, int per_job) {
  v1::JobEvent e;
  e.set_type("metrics");
  e.set_level("info");
  for (int step = 1; step <= per_job; ++step) {
    e.mutable_metrics()->set_step(step);
    for (const char* job : {"ftjob-a", "ftjob-b"}) {
      ASSERT_TRUE(store.AppendEvent(job, e, 1, step).ok());
    }
  }
}

TEST_F(StoreTest, EventsAreNumberedPerJobAndCursorsStayInTheirJob) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-b"), "", "").ok());
  InterleaveEvents(*store_, 3);
  auto a = store_->ListEvents("ftjob-a", "", 100);
  auto b = store_->ListEvents("ftjob-b", "", 100);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->data.size(), 5u);  // created + queued + 3 metrics
  ASSERT_EQ(b->data.size(), 5u);
  for (int n = 0; n < 5; ++n) {
    EXPECT_EQ(a->data[n].id(), absl::StrCat("ftevent-a-", n + 1));
    EXPECT_EQ(b->data[n].id(), absl::StrCat("ftevent-b-", n + 1));
  }
  auto after = store_->ListEvents("ftjob-a", a->data[2].id(), 100);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->data.size(), 2u);
  EXPECT_EQ(after->data[0].metrics().step(), 2);
  // Another job's id, a number not written yet and a malformed id are all
  // the same unknown cursor.
  for (const std::string& cursor :
       {b->data[1].id(), std::string("ftevent-a-6"), std::string("ftevent-a-0"),
        std::string("ftevent-a-+2"), std::string("ftevent-2"),
        std::string("bogus")}) {
    auto st = store_->ListEvents("ftjob-a", cursor, 100).status();
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << cursor << ": " << st;
    EXPECT_EQ(
        st.message(),
        absl::StrCat("after: not an event id of job ftjob-a: '", cursor, "'"));
  }
}

TEST_F(StoreTest, TheListenerHearsTheJobOfEveryEvent) {
  std::vector<std::string> heard;
  store_->SetEventListener(
      [&](const std::string& job) { heard.push_back(job); });
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-b"), "", "").ok());
  InterleaveEvents(*store_, 1);
  store::TransitionUpdate u;
  ASSERT_TRUE(store_
                  ->Transition("ftjob-b", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_CANCELLED, std::nullopt, u)
                  .ok());
  // A repeated event is not stored, so not heard.
  v1::JobEvent e;
  e.mutable_metrics()->set_step(1);
  EXPECT_FALSE(store_->AppendEvent("ftjob-a", e, 1, 1).ok());
  // (A queued job is written with two events: created, queued.)
  EXPECT_EQ(heard, (std::vector<std::string>{"ftjob-a", "ftjob-a", "ftjob-b", "ftjob-b",
                                             "ftjob-a", "ftjob-b", "ftjob-b"}));
  store_->SetEventListener(nullptr);
  InterleaveEvents(*store_, 0);
  EXPECT_EQ(heard.size(), 7u);
}

TEST_F(StoreTest, AnAttemptsReportIsRecordedAsAWholeAndRepeatsAreHarmless) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  ASSERT_TRUE(store_->Transition("ftjob-a", v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_RUNNING,
                                 std::nullopt, {.attempt = 1})
                  .ok());
  std::vector<Store::AttemptEvent> report;
  for (int seq = 1; seq <= 3; ++seq) {
    Store::AttemptEvent e{.seq = seq};
    e.event.set_type("metrics");
    e.event.mutable_metrics()->set_step(seq);
    report.push_back(e);
  }
  Store::AttemptReport r{.job_id = "ftjob-a",
                         .attempt = 1,
                         .events = report,
                         .steps_done = 3,
                         .steps_total = 10,
                         .trained_tokens = 300};
  ASSERT_TRUE(store_->RecordAttemptReport(r).ok());
  // The same report again (its ack was lost), and one more event.
  r.events.push_back({.seq = 4});
  r.steps_done = 4;
  r.trained_tokens = 400;
  ASSERT_TRUE(store_->RecordAttemptReport(r).ok());
  auto events = store_->ListEvents("ftjob-a", "", 100);
  int metrics = 0;
  for (const auto& e : events->data) metrics += e.type() == "metrics";
  EXPECT_EQ(metrics, 3);
  EXPECT_EQ(events->data.size(), 3u + 4u);  // created, queued, running + 4
  auto job = store_->GetJob("ftjob-a");
  EXPECT_EQ(job->progress().steps_done(), 4);
  EXPECT_EQ(job->trained_tokens(), 400);
  // A superseded attempt's progress is not taken.
  ASSERT_TRUE(store_
                  ->RecordAttemptReport({.job_id = "ftjob-a",
                                         .attempt = 7,
                                         .steps_done = 9,
                                         .steps_total = 10,
                                         .trained_tokens = 900})
                  .ok());
  EXPECT_EQ(store_->GetJob("ftjob-a")->progress().steps_done(), 4);
}

TEST_F(StoreTest, AReportsCheckpointsNotesAndOutcomeGoInItsOneTransaction) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  ASSERT_TRUE(store_
                  ->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 1})
                  .ok());
  v1::ResultFile f;
  f.set_name("adapter_model.safetensors");
  f.set_sha256(std::string(64, 'd'));
  ASSERT_TRUE(store_->PutCheckpointFile("ftjob-a", 5, 1, f).ok());
  Store::AttemptReport r{.job_id = "ftjob-a", .attempt = 1};
  r.events.push_back({.seq = 1});
  r.events.back().event.set_type("metrics");
  r.checkpoints.push_back({.step = 5, .files = {"adapter_model.safetensors"}});
  r.checkpoints.push_back({.step = 9, .files = {"missing.bin"}});
  v1::JobEvent note;
  note.set_type("message");
  note.set_message("a note");
  r.notes.push_back(note);
  // An outcome whose compare-and-set fails (the job is not cancelling):
  // nothing of the report is written.
  r.status_change = Store::AttemptReport::StatusChange{
      .from = v1::JOB_STATUS_CANCELLING, .to = v1::JOB_STATUS_CANCELLED};
  auto before = store_->ListEvents("ftjob-a", "", 100)->data.size();
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->RecordAttemptReport(r)));
  EXPECT_EQ(store_->ListEvents("ftjob-a", "", 100)->data.size(), before);
  EXPECT_TRUE(store_->ListCheckpoints("ftjob-a")->empty());

  r.status_change = Store::AttemptReport::StatusChange{
      .from = v1::JOB_STATUS_RUNNING, .to = v1::JOB_STATUS_FAILED};
  r.status_change->update.message = "The job failed: boom";
  ASSERT_TRUE(store_->RecordAttemptReport(r).ok());
  auto events = store_->ListEvents("ftjob-a", "", 100)->data;
  ASSERT_EQ(events.size(), before + 5);
  EXPECT_EQ(events[before].type(), "metrics");
  EXPECT_EQ(events[before + 1].message(), "Checkpoint saved at step 5");
  EXPECT_EQ(events[before + 2].level(), "warn");
  EXPECT_TRUE(absl::StrContains(events[before + 2].message(),
                                "step 9 was not recorded"))
      << events[before + 2].message();
  EXPECT_EQ(events[before + 3].message(), "a note");
  EXPECT_EQ(events[before + 4].status(), v1::JOB_STATUS_FAILED);
  EXPECT_EQ(store_->ListCheckpoints("ftjob-a")->size(), 1u);
  EXPECT_EQ(store_->GetJob("ftjob-a")->status(), v1::JOB_STATUS_FAILED);
}

TEST_F(StoreTest, DeleteFileRefusedWhileAJobUsesIt) {
  ASSERT_TRUE(store_->InsertFile(MakeFile("file-1")).ok());
  ASSERT_TRUE(store_->InsertFile(MakeFile("file-2")).ok());  // same content
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());   // uses file-1
  EXPECT_TRUE(
      absl::IsFailedPrecondition(store_->DeleteFile("file-1").status()));
  auto shared = store_->DeleteFile("file-2");
  ASSERT_TRUE(shared.ok());
  EXPECT_FALSE(*shared);  // file-1 still holds the blob
  ASSERT_TRUE(store_->Transition("ftjob-a", v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_CANCELLED, std::nullopt, {}).ok());
  auto last = store_->DeleteFile("file-1");
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(*last);
  EXPECT_TRUE(absl::IsNotFound(store_->GetFile("file-1").status()));
  EXPECT_TRUE(absl::IsNotFound(store_->DeleteFile("file-1").status()));
  // A result file with the same bytes keeps the blob too.
  ASSERT_TRUE(store_->InsertFile(MakeFile("file-3")).ok());
  v1::ResultFile same;
  same.set_name("adapter_model.safetensors");
  same.set_sha256(MakeFile("file-3").sha256());
  ASSERT_TRUE(store_->PutResultFile("ftjob-a", same).ok());
  auto kept = store_->DeleteFile("file-3");
  ASSERT_TRUE(kept.ok());
  EXPECT_FALSE(*kept);
  EXPECT_TRUE(*store_->BlobReferenced(same.sha256()));
}

// A mixture's every file (each source and its validation file) is held
// while the job is unfinished, and checked in the insert's transaction.
TEST_F(StoreTest, EveryFileOfAMixtureIsHeldWhileTheJobRuns) {
  for (const char* id : {"file-m1", "file-m2", "file-mv"}) {
    ASSERT_TRUE(store_->InsertFile(MakeFile(id)).ok());
  }
  v1::Job job = MakeJob("ftjob-mix");
  job.set_training_file("file-m1");
  auto* first = job.mutable_training_mixture()->add_sources();
  first->set_file_id("file-m1");
  auto* second = job.mutable_training_mixture()->add_sources();
  second->set_file_id("file-m2");
  second->set_validation_file_id("file-mv");
  v1::Job missing = job;
  missing.set_id("ftjob-missing");
  missing.mutable_training_mixture()->mutable_sources(1)->set_file_id("file-gone");
  auto refused = CreateJob(missing, "", "");
  EXPECT_TRUE(absl::IsNotFound(refused.status())) << refused.status();
  EXPECT_EQ(refused.status().message(),
            "training_mixture.sources[1].file_id: no such file file-gone");
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("ftjob-missing").status()));
  ASSERT_TRUE(CreateJob(job, "", "").ok());
  for (const char* id : {"file-m1", "file-m2", "file-mv"}) {
    EXPECT_TRUE(absl::IsFailedPrecondition(store_->DeleteFile(id).status())) << id;
  }
  ASSERT_TRUE(store_->Transition("ftjob-mix", v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_CANCELLED, std::nullopt, {}).ok());
  for (const char* id : {"file-m2", "file-mv"}) {
    EXPECT_TRUE(store_->DeleteFile(id).ok()) << id;
  }
}

// Each stage's files (DMT's general file is only stage 2's) are held too.
TEST_F(StoreTest, EveryFileOfEveryStageIsHeldWhileTheJobRuns) {
  for (const char* id : {"file-s1", "file-s2", "file-sv"}) {
    ASSERT_TRUE(store_->InsertFile(MakeFile(id)).ok());
  }
  v1::Job job = MakeJob("ftjob-stages");
  job.set_training_file("file-s1");
  job.add_stages()->mutable_training_mixture()->add_sources()->set_file_id("file-s1");
  auto* general = job.add_stages()->mutable_training_mixture()->add_sources();
  general->set_file_id("file-s2");
  general->set_validation_file_id("file-sv");
  v1::Job missing = job;
  missing.set_id("ftjob-missing");
  missing.mutable_stages(1)->mutable_training_mixture()->mutable_sources(0)->set_validation_file_id(
      "file-gone");
  auto refused = CreateJob(missing, "", "");
  EXPECT_TRUE(absl::IsNotFound(refused.status())) << refused.status();
  EXPECT_EQ(refused.status().message(),
            "stages[1].training_mixture.sources[0].validation_file_id: no such file file-gone");
  ASSERT_TRUE(CreateJob(job, "", "").ok());
  for (const char* id : {"file-s1", "file-s2", "file-sv"}) {
    EXPECT_TRUE(absl::IsFailedPrecondition(store_->DeleteFile(id).status())) << id;
  }
}

// A succeeded job keeps its after-job report; its general file is held
// while it runs.
TEST_F(StoreTest, ASucceededJobKeepsItsReport) {
  ASSERT_TRUE(store_->InsertFile(MakeFile("file-gen")).ok());
  v1::Job job = MakeJob("ftjob-report");
  job.mutable_reports()->set_general_file("file-gen");
  ASSERT_TRUE(CreateJob(job, "", "").ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->DeleteFile("file-gen").status()));
  ASSERT_TRUE(store_->Transition("ftjob-report", v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_RUNNING, std::nullopt, {}).ok());
  TransitionUpdate done;
  v1::JobReport report;
  report.mutable_forgetting()->set_loss_before(1.5);
  report.mutable_forgetting()->set_loss_after(1.75);
  report.mutable_intruders()->set_total(3);
  done.report = report;
  ASSERT_TRUE(store_->Transition("ftjob-report", v1::JOB_STATUS_RUNNING,
                                 v1::JOB_STATUS_SUCCEEDED, std::nullopt, done).ok());
  auto loaded = store_->GetJob("ftjob-report");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->report().forgetting().loss_after(), 1.75);
  EXPECT_EQ(loaded->report().intruders().total(), 3);
  EXPECT_TRUE(store_->DeleteFile("file-gen").ok());
}

TEST_F(StoreTest, ListJobsFiltersByStatusAndMetadata) {
  for (int i = 0; i < 4; ++i) {
    v1::Job j = MakeJob("ftjob-" + std::to_string(i));
    (*j.mutable_metadata())["team"] = i % 2 ? "nlp" : "vision";
    if (i == 3) (*j.mutable_metadata())["tier"] = "gold";
    ASSERT_TRUE(CreateJob(j, "", "").ok());
  }
  auto nlp = store_->ListJobs("default", 10, "", v1::JOB_STATUS_UNSPECIFIED, {{"team", "nlp"}});
  ASSERT_TRUE(nlp.ok());
  EXPECT_EQ(nlp->data.size(), 2u);
  auto gold = store_->ListJobs("default", 10, "", v1::JOB_STATUS_QUEUED,
                               {{"team", "nlp"}, {"tier", "gold"}});
  ASSERT_EQ(gold->data.size(), 1u);
  EXPECT_EQ(gold->data[0].id(), "ftjob-3");
  EXPECT_TRUE(store_->ListJobs("default", 10, "", v1::JOB_STATUS_RUNNING, {})->data.empty());
}

TEST_F(StoreTest, CheckpointsNeedAllTheirFiles) {
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  v1::ResultFile f;
  f.set_name("adapter_model.safetensors");
  f.set_bytes(3);
  f.set_sha256(std::string(64, 'd'));
  ASSERT_TRUE(store_->PutCheckpointFile("ftjob-a", 10, 1, f).ok());
  v1::CheckpointMetrics m;
  m.set_train_loss(2.5);
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->RecordCheckpoint(
      "ftjob-a", 10, 1, {"adapter_model.safetensors", "trainer_state.json"}, m)));
  // A file from another attempt does not count.
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->RecordCheckpoint(
      "ftjob-a", 10, 2, {"adapter_model.safetensors"}, m)));
  ASSERT_TRUE(store_->RecordCheckpoint("ftjob-a", 10, 1, {"adapter_model.safetensors"}, m).ok());
  ASSERT_TRUE(store_->RecordCheckpoint("ftjob-a", 10, 1, {"adapter_model.safetensors"}, m).ok());
  auto all = store_->ListCheckpoints("ftjob-a");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].step_number(), 10);
  EXPECT_EQ((*all)[0].metrics().train_loss(), 2.5);
  ASSERT_EQ((*all)[0].files_size(), 1);
  EXPECT_TRUE(absl::IsNotFound(store_->ListCheckpoints("ftjob-zz").status()));
  // The same file again (a repeated report) is fine; a recorded
  // checkpoint's files are never replaced (a late upload).
  EXPECT_TRUE(store_->PutCheckpointFile("ftjob-a", 10, 2, f).ok());
  f.set_sha256(std::string(64, 'e'));
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->PutCheckpointFile("ftjob-a", 10, 2, f)));
  EXPECT_EQ(store_->ListCheckpoints("ftjob-a")->at(0).files(0).sha256(),
            std::string(64, 'd'));
}

TEST_F(StoreTest, ReferencedBlobsNameEveryTableThatHoldsOne) {
  ASSERT_TRUE(store_->InsertFile(MakeFile("file-1")).ok());  // 'a' * 64
  ASSERT_TRUE(CreateJob(MakeJob("ftjob-a"), "", "").ok());
  v1::ResultFile f;
  f.set_name("adapter_model.safetensors");
  f.set_sha256(std::string(64, 'b'));
  ASSERT_TRUE(store_->PutResultFile("ftjob-a", f).ok());
  f.set_sha256(std::string(64, 'c'));  // a checkpoint not (yet) recorded
  ASSERT_TRUE(store_->PutCheckpointFile("ftjob-a", 5, 1, f).ok());
  auto refs = store_->ReferencedBlobs();
  ASSERT_TRUE(refs.ok()) << refs.status();
  EXPECT_EQ(*refs, (absl::flat_hash_set<std::string>{
                       std::string(64, 'a'), std::string(64, 'b'),
                       std::string(64, 'c')}));
}

TEST_F(StoreTest, ApiKeysFoundByHashAndRevoked) {
  v1::ApiKey k;
  k.set_id("key-1");
  k.set_project("team-a");
  k.set_role("user");
  k.set_created_at(NowUnixSeconds());
  ASSERT_TRUE(store_->InsertApiKey(k, std::string(64, 'e')).ok());
  auto found = store_->FindApiKey(std::string(64, 'e'));
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->project(), "team-a");
  EXPECT_EQ(found->revoked_at(), 0);
  EXPECT_TRUE(absl::IsNotFound(store_->FindApiKey(std::string(64, 'f')).status()));
  ASSERT_TRUE(store_->RevokeApiKey("key-1").ok());
  EXPECT_GT(store_->FindApiKey(std::string(64, 'e'))->revoked_at(), 0);
  EXPECT_TRUE(absl::IsNotFound(store_->RevokeApiKey("key-9").status()));
  EXPECT_EQ(store_->ListApiKeys("team-a")->size(), 1u);
  EXPECT_EQ(store_->ListApiKeys("team-b")->size(), 0u);
}

TEST_F(StoreTest, FilesListedPerProject) {
  v1::File a = MakeFile("file-a");
  a.set_project("team-a");
  v1::File b = MakeFile("file-b");
  b.set_project("team-b");
  ASSERT_TRUE(store_->InsertFile(a).ok());
  ASSERT_TRUE(store_->InsertFile(b).ok());
  auto listed = store_->ListFiles("team-a", 10, "", "");
  ASSERT_EQ(listed->data.size(), 1u);
  EXPECT_EQ(listed->data[0].id(), "file-a");
  EXPECT_EQ(store_->GetFile("file-b")->project(), "team-b");
}

TEST(StoreFileTest, SurvivesReopenAndMigratesOnce) {
  std::string dir = ::testing::TempDir() + "/store_reopen";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string path = dir + "/lathe.db";
  {
    auto s = Store::Open(path);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE((*s)->InsertFile(MakeFile("file-1")).ok());
    ASSERT_TRUE((*s)->CreateJob(MakeJob("ftjob-1"), "k", "f").ok());
  }
  auto s = Store::Open(path);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE((*s)->GetFile("file-1").ok());
  auto job = (*s)->GetJob("ftjob-1");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  auto db = Database::Open(path);
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(*(*db)->UserVersion(), 9);
}

TEST(StoreFileTest, MigrationNumbersEarlierEventsPerJob) {
  std::string dir = ::testing::TempDir() + "/store_event_migration";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string path = dir + "/lathe.db";
  {
    auto s = Store::Open(path);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE((*s)->InsertFile(MakeFile("file-1")).ok());
    ASSERT_TRUE((*s)->CreateJob(MakeJob("ftjob-a"), "", "").ok());
    ASSERT_TRUE((*s)->CreateJob(MakeJob("ftjob-b"), "", "").ok());
    InterleaveEvents(**s, 2);
  }
  {
    // The events table as the schema before per-job numbers had it, and
    // no job_files (migration 5), report column (6), webhooks (7),
    // devices column (8) or sharing columns (9) yet.
    auto db = Database::Open(path);
    ASSERT_TRUE(db.ok());
    int version = *(*db)->UserVersion();
    ASSERT_EQ(version, 9);
    ASSERT_TRUE(
        (*db)
            ->Execute("ALTER TABLE jobs DROP COLUMN base_sha256;"
                      "ALTER TABLE jobs DROP COLUMN shared_memory_bytes;"
                      "ALTER TABLE jobs DROP COLUMN devices;"
                      "DROP TABLE webhook_deliveries;"
                      "DROP TABLE webhook_event_types;"
                      "DROP TABLE webhooks;"
                      "ALTER TABLE jobs DROP COLUMN report;"
                      "DROP TABLE job_files;"
                      "DROP INDEX events_by_job_seq;"
                      "ALTER TABLE events DROP COLUMN job_seq;"
                      "CREATE INDEX events_by_job ON events(job_id, seq);")
            .ok());
    ASSERT_TRUE(
        (*db)
            ->Execute(absl::StrCat("PRAGMA user_version = ", version - 6))
            .ok());
  }
  auto s = Store::Open(path);
  ASSERT_TRUE(s.ok()) << s.status();
  v1::JobEvent e;
  e.mutable_metrics()->set_step(3);
  auto added = (*s)->AppendEvent("ftjob-a", e, 1, 3);
  ASSERT_TRUE(added.ok()) << added.status();
  // created, queued, 2 metrics, then this one.
  EXPECT_EQ(added->id(), "ftevent-a-5");
  auto a = (*s)->ListEvents("ftjob-a", "", 100);
  auto b = (*s)->ListEvents("ftjob-b", "ftevent-b-2", 100);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->data.size(), 5u);
  for (int n = 0; n < 5; ++n) {
    EXPECT_EQ(a->data[n].id(), absl::StrCat("ftevent-a-", n + 1));
  }
  for (int n = 2; n < 5; ++n) {
    EXPECT_EQ(a->data[n].metrics().step(), n - 1);  // written order kept
  }
  ASSERT_EQ(b->data.size(), 2u);
  EXPECT_EQ(b->data[1].id(), "ftevent-b-4");
  // Migration 5 recorded the jobs' files: the one they read is held.
  EXPECT_TRUE(absl::IsFailedPrecondition((*s)->DeleteFile("file-1").status()));
  // Migration 8: the older jobs run on one worker each.
  auto in = (*s)->ReadSchedulerInput();
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_EQ(in->queued.size(), 2u);
  for (const auto& q : in->queued) EXPECT_EQ(q.devices, 1) << q.job_id;
}

}  // namespace
}  // namespace lathe::store
