#include "server/coordinator.h"

#include <gtest/gtest.h>

#include <future>
#include <map>
#include <thread>

#include "common/ids.h"

namespace lathe {
namespace {

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = *store::Store::Open(":memory:");
    v1::Model m;
    m.set_id("tiny");
    m.set_path("/models/tiny");
    ASSERT_TRUE(store_->RegisterModel(m).ok());
    CoordinatorOptions o;
    o.lease_ttl = absl::Seconds(10);
    o.max_attempts = 2;
    coord_ = *Coordinator::Create(*store_, o);
  }

  void AddJob(const std::string& id) {
    v1::Job j;
    j.set_id(id);
    j.set_status(v1::JOB_STATUS_QUEUED);
    j.set_model("tiny");
    j.mutable_method()
        ->mutable_supervised()
        ->mutable_hyperparameters()
        ->set_learning_rate_multiplier(2);
    ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  }

  // A job on `devices` workers at once.
  void AddGang(const std::string& id, int devices) {
    v1::Job j;
    j.set_id(id);
    j.set_status(v1::JOB_STATUS_QUEUED);
    j.set_model("tiny");
    j.set_devices(devices);
    j.mutable_method()->mutable_supervised();
    ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  }

  // A worker in gib_ reports one CPU device of that many GiB (placement
  // takes the smallest that fits first: rank 0 of a gang); others none.
  v1::WorkerDirective Report(const std::string& worker,
                             const v1::RunningAttempt* a = nullptr,
                             const std::string& peer_host = "") {
    v1::WorkerReport r;
    r.set_worker_id(worker);
    if (auto it = gib_.find(worker); it != gib_.end()) {
      v1::Device* dev = r.add_devices();
      dev->set_kind("cpu");
      dev->set_memory_bytes(it->second << 30);
    }
    if (a) *r.mutable_attempt() = *a;
    auto d = coord_->HandleReport(r, peer_host);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : v1::WorkerDirective();
  }

  static v1::RunningAttempt Attempt(const std::string& job, int32_t attempt,
                                    int rank = 0) {
    v1::RunningAttempt a;
    a.set_job_id(job);
    a.set_attempt(attempt);
    a.set_rank(rank);
    return a;
  }

  // Starts 2-worker job `id` on w1 (8 GiB: rank 0) and w2 (16 GiB: rank 1)
  // and runs it: rank 0 assigned, its rendezvous ":29500" reported from
  // 127.0.0.1, rank 1 assigned.
  void RunPair(const std::string& id) {
    gib_["w1"] = 8;
    gib_["w2"] = 16;
    EXPECT_FALSE(Report("w1").has_assignment());  // alone: the job waits
    EXPECT_FALSE(Report("w2").has_assignment());  // starts it, as rank 1
    ASSERT_EQ(store_->GetJob(id)->status(), v1::JOB_STATUS_RUNNING);
    v1::WorkerDirective rank0 = Report("w1");
    ASSERT_TRUE(rank0.has_assignment());
    ASSERT_EQ(rank0.assignment().rank(), 0);
    v1::RunningAttempt a = Attempt(id, rank0.assignment().attempt());
    a.set_rendezvous(":29500");
    EXPECT_FALSE(Report("w1", &a, "127.0.0.1").stop());
    v1::WorkerDirective rank1 = Report("w2");
    ASSERT_TRUE(rank1.has_assignment());
    ASSERT_EQ(rank1.assignment().rank(), 1);
  }

  // The job's events' messages, oldest first.
  std::vector<std::string> Messages(const std::string& job) {
    std::vector<std::string> out;
    auto events = store_->ListEvents(job, "", 100);
    EXPECT_TRUE(events.ok()) << events.status();
    if (events.ok()) {
      for (const auto& e : events->data) out.push_back(e.message());
    }
    return out;
  }

  bool AnyMessageHas(const std::string& job, const std::string& text) {
    for (const std::string& m : Messages(job)) {
      if (m.find(text) != std::string::npos) return true;
    }
    return false;
  }

  void UploadAdapter(const std::string& job) {
    v1::ResultFile f;
    f.set_name("adapter_model.safetensors");
    f.set_sha256(std::string(64, 'a'));
    ASSERT_TRUE(store_->PutResultFile(job, f).ok());
  }

  std::map<std::string, int64_t> gib_;

  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Coordinator> coord_;
};

TEST_F(CoordinatorTest, AssignsFifoAndRecordsProgressAndSuccess) {
  AddJob("ftjob-1");
  AddJob("ftjob-2");
  auto d = Report("w1");
  ASSERT_TRUE(d.has_assignment());
  EXPECT_EQ(d.assignment().job_id(), "ftjob-1");
  EXPECT_EQ(d.assignment().attempt(), 1);
  EXPECT_EQ(d.assignment().model_path(), "/models/tiny");
  EXPECT_EQ(d.assignment().job().id(),
            "ftjob-1");  // settings travel in the job
  EXPECT_GT(d.lease_deadline_ms(), NowUnixMillis());
  EXPECT_EQ(Report("w2").assignment().job_id(), "ftjob-2");
  EXPECT_FALSE(Report("w3").has_assignment());

  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  a.set_step(2);
  a.set_total_steps(10);
  for (int seq = 1; seq <= 2; ++seq) {
    auto* e = a.add_events();
    e->set_seq(seq);
    e->mutable_event()->set_type("metrics");
  }
  d = Report("w1", &a);
  EXPECT_EQ(d.acked_event_seq(), 2);
  EXPECT_FALSE(d.stop());
  Report("w1", &a);  // a repeated report stores nothing twice
  auto events = store_->ListEvents("ftjob-1", "", 100);
  int metrics = 0;
  for (const auto& e : events->data) metrics += e.type() == "metrics";
  EXPECT_EQ(metrics, 2);
  EXPECT_EQ(store_->GetJob("ftjob-1")->progress().steps_done(), 2);

  // Success needs the uploaded result files.
  a.clear_events();
  a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
  a.mutable_outcome()->add_result_files("adapter_model.safetensors");
  v1::WorkerReport r;
  r.set_worker_id("w1");
  *r.mutable_attempt() = a;
  EXPECT_TRUE(absl::IsFailedPrecondition(coord_->HandleReport(r).status()));
  v1::ResultFile f;
  f.set_name("adapter_model.safetensors");
  f.set_sha256(std::string(64, 'b'));
  ASSERT_TRUE(store_->PutResultFile("ftjob-1", f).ok());
  d = Report("w1", &a);
  EXPECT_TRUE(d.outcome_recorded());
  auto job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_SUCCEEDED);
  EXPECT_EQ(job->fine_tuned_model().rfind("ft:tiny:lathe:", 0), 0u);
  // The same outcome reported again is harmless.
  EXPECT_TRUE(Report("w1", &a).outcome_recorded());
}

TEST_F(CoordinatorTest, CancelReachesTheWorker) {
  AddJob("ftjob-1");
  Report("w1");
  ASSERT_TRUE(store_
                  ->Transition("ftjob-1", v1::JOB_STATUS_RUNNING,
                               v1::JOB_STATUS_CANCELLING, std::nullopt, {})
                  .ok());
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  auto d = Report("w1", &a);
  EXPECT_TRUE(d.stop());
  a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_CANCELLED);
  EXPECT_TRUE(Report("w1", &a).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-1")->status(), v1::JOB_STATUS_CANCELLED);
}

TEST_F(CoordinatorTest, ExpiredLeaseRequeuesThenFailsAndFencesOldAttempt) {
  AddJob("ftjob-1");
  Report("w1");
  absl::Time later = absl::Now() + absl::Seconds(11);
  EXPECT_EQ(coord_->SweepExpiredLeases(later), 1);
  auto job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  // Backoff: not placed at once.
  EXPECT_FALSE(Report("w2").has_assignment());

  // The dead attempt speaks late: refused.
  v1::RunningAttempt old;
  old.set_job_id("ftjob-1");
  old.set_attempt(1);
  old.add_events()->set_seq(1);
  auto d = Report("w1", &old);
  EXPECT_TRUE(d.stop());
  EXPECT_FALSE(d.superseded());  // same attempt number, job taken back
  EXPECT_EQ(d.stop_reason(), "job is queued");
  EXPECT_TRUE(
      absl::IsFailedPrecondition(coord_->CheckCurrentAttempt("ftjob-1", 1)));
  v1::ResultFile late;
  late.set_name("adapter_model.safetensors");
  late.set_sha256(std::string(64, 'f'));
  EXPECT_TRUE(absl::IsFailedPrecondition(
      coord_->RecordResultFile("ftjob-1", 1, 0, late)));
  EXPECT_TRUE(absl::IsFailedPrecondition(
      coord_->RecordResultFile("ftjob-1", 1, 5, late)));
  EXPECT_TRUE(store_->ResultFiles("ftjob-1")->empty());

  // Attempt 2 (after backoff) also dies: max_attempts = 2, so it fails.
  ASSERT_TRUE(store_
                  ->Transition("ftjob-1", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 2, .worker_id = "w2"})
                  .ok());
  EXPECT_TRUE(Report("w1", &old).superseded());  // attempt 1 is over
  old.set_attempt(2);
  old.clear_events();
  Report("w2", &old);  // takes the lease for attempt 2
  EXPECT_TRUE(coord_->CheckCurrentAttempt("ftjob-1", 2).ok());
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Seconds(11)), 1);
  job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_FAILED);
  EXPECT_EQ(job->error().code(), "worker_lost");
  EXPECT_FALSE(job->error().user_fault());
}

TEST_F(CoordinatorTest, PauseCheckpointsStopsAndResumeRequeuesWithCheckpoint) {
  AddJob("ftjob-1");
  Report("w1");
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  a.set_step(7);
  auto paused = coord_->PauseJob("ftjob-1");
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->status(), v1::JOB_STATUS_PAUSED);
  // The worker is told to checkpoint and stop; resume waits for it.
  auto d = Report("w1", &a);
  EXPECT_TRUE(d.stop());
  EXPECT_TRUE(d.checkpoint_before_stop());

  // A checkpoint is recorded only once all its files are uploaded; one
  // reported without them is refused with a warning, not a broken stream.
  auto* cp = a.add_checkpoints();
  cp->set_step(7);
  cp->add_files("adapter_model.safetensors");
  d = Report("w1", &a);
  EXPECT_EQ(d.acked_checkpoints_size(), 1);
  EXPECT_TRUE(store_->ListCheckpoints("ftjob-1")->empty());
  auto events = store_->ListEvents("ftjob-1", "", 100);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->data.back().level(), "warn");
  EXPECT_NE(events->data.back().message().find("was not uploaded"),
            std::string::npos)
      << events->data.back().message();
  v1::ResultFile f;
  f.set_name("adapter_model.safetensors");
  f.set_sha256(std::string(64, 'c'));
  ASSERT_TRUE(store_->PutCheckpointFile("ftjob-1", 7, 1, f).ok());
  a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  d = Report("w1", &a);
  EXPECT_TRUE(d.outcome_recorded());
  ASSERT_EQ(d.acked_checkpoints_size(), 1);
  EXPECT_EQ(store_->GetJob("ftjob-1")->status(), v1::JOB_STATUS_PAUSED);

  auto resumed = coord_->ResumeJob("ftjob-1");
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->status(), v1::JOB_STATUS_QUEUED);
  d = Report("w2");
  ASSERT_TRUE(d.has_assignment());
  EXPECT_EQ(d.assignment().attempt(), 2);
  EXPECT_EQ(d.assignment().resume_from().step_number(), 7);
  // Only queued or running jobs pause.
  ASSERT_TRUE(store_
                  ->Transition("ftjob-1", v1::JOB_STATUS_RUNNING,
                               v1::JOB_STATUS_CANCELLING, 2, {})
                  .ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(coord_->PauseJob("ftjob-1").status()));
}

TEST_F(CoordinatorTest, WorkerShutdownHandsTheJobBack) {
  AddJob("ftjob-1");
  Report("w1");
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  a.set_step(3);
  a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  EXPECT_TRUE(Report("w1", &a).outcome_recorded());
  auto job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(Report("w2").assignment().attempt(), 2);
}

TEST_F(CoordinatorTest, JobsLargerThanAnyWorkerWaitWithAWarning) {
  v1::Job j;
  j.set_id("ftjob-big");
  j.set_status(v1::JOB_STATUS_QUEUED);
  j.set_model("tiny");
  j.set_memory_bytes(1LL << 40);
  ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  v1::WorkerReport r;
  r.set_worker_id("small");
  auto* dev = r.add_devices();
  dev->set_kind("cpu");
  dev->set_memory_bytes(1LL << 30);
  auto d = coord_->HandleReport(r);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->has_assignment());
  int warnings = 0;
  auto events = store_->ListEvents("ftjob-big", "", 100);
  ASSERT_TRUE(events.ok());
  for (const auto& e : events->data) {
    warnings += e.level() == "warn";
  }
  EXPECT_EQ(warnings, 1);
  EXPECT_EQ(store_->GetJob("ftjob-big")->status(), v1::JOB_STATUS_QUEUED);
}

// The reported devices reach placement: a job goes to a worker whose
// device's total memory fits it, whatever is free at the moment.
TEST_F(CoordinatorTest, PlacesByTheReportedDevicesTotalMemory) {
  v1::Job j;
  j.set_id("ftjob-8g");
  j.set_status(v1::JOB_STATUS_QUEUED);
  j.set_model("tiny");
  j.set_memory_bytes(8LL << 30);
  ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  auto report = [&](const std::string& worker, int64_t total, int64_t free) {
    v1::WorkerReport r;
    r.set_worker_id(worker);
    v1::Device* dev = r.add_devices();
    dev->set_kind("cuda");
    dev->set_name("NVIDIA test GPU");
    dev->set_memory_bytes(total);
    dev->set_free_memory_bytes(free);
    auto d = coord_->HandleReport(r);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : v1::WorkerDirective();
  };
  EXPECT_FALSE(report("small", 4LL << 30, 4LL << 30).has_assignment());
  const v1::WorkerDirective big = report("big", 80LL << 30, 2LL << 30);
  ASSERT_TRUE(big.has_assignment());
  EXPECT_EQ(big.assignment().job_id(), "ftjob-8g");
}

TEST_F(CoordinatorTest,
       ResumeWhileThePauseCheckpointIsWrittenQueuesWhenItLands) {
  AddJob("ftjob-1");
  Report("w1");
  ASSERT_TRUE(coord_->PauseJob("ftjob-1").ok());
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  a.set_step(4);
  EXPECT_TRUE(Report("w1", &a).checkpoint_before_stop());
  // Resume right after pause: accepted, the job shows it waits.
  auto resumed = coord_->ResumeJob("ftjob-1");
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->status(), v1::JOB_STATUS_PAUSED);
  EXPECT_TRUE(resumed->resume_requested());
  EXPECT_TRUE(coord_->ResumeJob("ftjob-1").ok());  // asking twice is harmless
  // The worker still finishes its pause checkpoint and stops...
  a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  EXPECT_TRUE(Report("w1", &a).outcome_recorded());
  // ...and then the job is queued, with no second call.
  auto job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_FALSE(job->resume_requested());
  EXPECT_EQ(Report("w2").assignment().attempt(), 2);
}

TEST_F(CoordinatorTest, PausingAgainCancelsAPendingResume) {
  AddJob("ftjob-1");
  Report("w1");
  ASSERT_TRUE(coord_->PauseJob("ftjob-1").ok());
  ASSERT_TRUE(coord_->ResumeJob("ftjob-1")->resume_requested());
  auto again = coord_->PauseJob("ftjob-1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->resume_requested());
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  EXPECT_TRUE(Report("w1", &a).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-1")->status(), v1::JOB_STATUS_PAUSED);
}

TEST_F(CoordinatorTest, PausesAndResumesDoNotUseUpAttempts) {
  // max_attempts = 2. Two pause/resume cycles start attempts 2 and 3; a
  // lost worker after them is the first failure, so the job is retried.
  AddJob("ftjob-1");
  int32_t attempt = 0;
  for (int cycle = 0; cycle < 2; ++cycle) {
    attempt = Report("w1").assignment().attempt();
    ASSERT_EQ(attempt, cycle + 1);
    ASSERT_TRUE(coord_->PauseJob("ftjob-1").ok());
    v1::RunningAttempt a;
    a.set_job_id("ftjob-1");
    a.set_attempt(attempt);
    a.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
    ASSERT_TRUE(Report("w1", &a).outcome_recorded());
    auto resumed = coord_->ResumeJob("ftjob-1");
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    ASSERT_EQ(resumed->status(), v1::JOB_STATUS_QUEUED);
  }
  ASSERT_EQ(Report("w1").assignment().attempt(), 3);
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Seconds(11)), 1);
  auto job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED) << job->error().message();
  EXPECT_EQ(job->failed_attempts(), 1);
  // A second failure reaches max_attempts.
  ASSERT_TRUE(store_
                  ->Transition("ftjob-1", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 4, .worker_id = "w1"})
                  .ok());
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(4);
  Report("w1", &a);
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Seconds(11)), 1);
  job = store_->GetJob("ftjob-1");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_FAILED);
  EXPECT_EQ(job->failed_attempts(), 2);
  EXPECT_NE(job->error().message().find("2 times"), std::string::npos)
      << job->error().message();
}

TEST_F(CoordinatorTest,
       AJobStoredByAnOlderLathedIsAssignedWithEverySettingResolved) {
  // As the previous lathed resolved it: epochs, batch, multiplier and LoRA
  // only (AddJob's record), nothing of the settings added since.
  AddJob("ftjob-old");
  auto d = Report("w1");
  ASSERT_TRUE(d.has_assignment());
  const v1::Job& job = d.assignment().job();
  const auto& hp = job.method().supervised().hyperparameters();
  EXPECT_EQ(job.adapter(), v1::ADAPTER_TYPE_LORA);
  EXPECT_DOUBLE_EQ(hp.learning_rate(), 2 * JobDefaults{}.base_learning_rate);
  EXPECT_EQ(hp.lr_scheduler(), v1::LR_SCHEDULER_LINEAR);
  EXPECT_EQ(hp.max_seq_len(), 512);
  EXPECT_EQ(hp.gradient_accumulation_steps(), 1);
  EXPECT_EQ(hp.checkpoint_every_steps(), JobDefaults{}.checkpoint_every_steps);
  EXPECT_EQ(job.lora().rank(), 8);
  // A job resolved now is sent as it is.
  v1::Job resolved = job;
  FillJobDefaults(resolved, JobDefaults{.base_learning_rate = 1,
                                        .checkpoint_every_steps = 1});
  EXPECT_EQ(resolved.SerializeAsString(), job.SerializeAsString());
}

TEST_F(CoordinatorTest, AReportsWritesDoNotHoldTheCoordinatorsLock) {
  CoordinatorOptions o;
  o.lease_ttl = absl::Seconds(10);
  o.replan_interval = absl::Hours(1);  // a fresh plan needs no store read
  coord_ = *Coordinator::Create(*store_, o);
  AddJob("ftjob-1");
  ASSERT_TRUE(Report("w1").has_assignment());
  EXPECT_FALSE(Report("w2").has_assignment());  // joins; nothing left to place
  v1::WorkerReport idle;
  idle.set_worker_id("w2");
  // w1's report writes its event inside its transaction, the store's lock
  // held (where the listener runs). Meanwhile w2's heartbeat, which needs
  // the coordinator's lock and no store, is answered.
  std::future<absl::StatusOr<v1::WorkerDirective>> heartbeat;
  bool answered_during_write = false;
  bool armed = true;
  store_->SetEventListener([&](const std::string&) {
    if (!std::exchange(armed, false)) return;
    heartbeat = std::async(std::launch::async,
                           [&] { return coord_->HandleReport(idle); });
    answered_during_write = heartbeat.wait_for(std::chrono::seconds(30)) ==
                            std::future_status::ready;
  });
  v1::RunningAttempt a;
  a.set_job_id("ftjob-1");
  a.set_attempt(1);
  a.add_events()->set_seq(1);
  v1::WorkerDirective d = Report("w1", &a);
  store_->SetEventListener(nullptr);
  EXPECT_EQ(d.acked_event_seq(), 1);
  ASSERT_TRUE(heartbeat.valid());
  EXPECT_TRUE(heartbeat.get().ok());
  EXPECT_TRUE(answered_during_write);
}

TEST(CoordinatorStartTest, NoJobIsLeftInAStateNothingAdvances) {
  auto store = *store::Store::Open(":memory:");
  v1::Model m;
  m.set_id("tiny");
  m.set_path("/models/tiny");
  ASSERT_TRUE(store->RegisterModel(m).ok());
  // As a lathed that crashed between the two steps of an old creation left it.
  v1::Job j;
  j.set_id("ftjob-stranded");
  j.set_status(v1::JOB_STATUS_VALIDATING_FILES);
  j.set_model("tiny");
  ASSERT_TRUE(store->CreateJob(j, "", "").ok());
  // A pause whose resume waited for the checkpoint when lathed died.
  j.set_id("ftjob-resuming");
  j.set_status(v1::JOB_STATUS_QUEUED);
  ASSERT_TRUE(store->CreateJob(j, "", "").ok());
  ASSERT_TRUE(store
                  ->Transition("ftjob-resuming", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 1})
                  .ok());
  ASSERT_TRUE(store
                  ->Transition("ftjob-resuming", v1::JOB_STATUS_RUNNING,
                               v1::JOB_STATUS_PAUSED, std::nullopt, {})
                  .ok());
  ASSERT_TRUE(
      store->SetResumeRequested("ftjob-resuming", 1, true, "resume asked")
          .ok());
  // A plain paused job stays paused.
  j.set_id("ftjob-paused");
  ASSERT_TRUE(store->CreateJob(j, "", "").ok());
  ASSERT_TRUE(store
                  ->Transition("ftjob-paused", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_PAUSED, std::nullopt, {})
                  .ok());

  auto coord = Coordinator::Create(*store, {});
  ASSERT_TRUE(coord.ok()) << coord.status();
  EXPECT_EQ(store->GetJob("ftjob-stranded")->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(store->GetJob("ftjob-resuming")->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_FALSE(store->GetJob("ftjob-resuming")->resume_requested());
  EXPECT_EQ(store->GetJob("ftjob-paused")->status(), v1::JOB_STATUS_PAUSED);
}

TEST_F(CoordinatorTest,
       QueuePositionIsTheSchedulersOrderAmongTheProjectsOwnJobs) {
  auto add = [&](const std::string& id, const std::string& project,
                 v1::JobPriority p) {
    v1::Job j;
    j.set_id(id);
    j.set_status(v1::JOB_STATUS_QUEUED);
    j.set_model("tiny");
    j.set_project(project);
    j.set_priority(p);
    j.set_created_at(NowUnixSeconds());
    ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  };
  add("ftjob-other-1", "other", v1::JOB_PRIORITY_HIGH);
  for (int i = 1; i <= 5; ++i)
    add("ftjob-n" + std::to_string(i), "p", v1::JOB_PRIORITY_NORMAL);
  add("ftjob-other-2", "other", v1::JOB_PRIORITY_NORMAL);
  add("ftjob-high", "p", v1::JOB_PRIORITY_HIGH);
  auto positions = coord_->QueuePositions("p");
  ASSERT_TRUE(positions.ok()) << positions.status();
  // The high-priority job is placed first: position 1, though created
  // last; the other project's jobs are not counted.
  EXPECT_EQ(positions->size(), 6u);
  EXPECT_EQ(positions->at("ftjob-high"), 1);
  for (int i = 1; i <= 5; ++i)
    EXPECT_EQ(positions->at("ftjob-n" + std::to_string(i)), i + 1);
  EXPECT_FALSE(positions->contains("ftjob-other-1"));
  // And the scheduler does place it first among p's jobs.
  auto d = Report("w1");
  ASSERT_TRUE(d.has_assignment());
  EXPECT_EQ(d.assignment().job_id(),
            "ftjob-other-1");  // a high job created before
  EXPECT_EQ(Report("w2").assignment().job_id(), "ftjob-high");
}

// Gangs: a job on several workers at once.

TEST_F(CoordinatorTest, AGangStartsOnAllItsWorkersAndRankZeroIsAssignedFirst) {
  AddGang("ftjob-g", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  EXPECT_FALSE(Report("w1").has_assignment());  // one idle worker: waits
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_QUEUED);
  // w2 joins: the job starts on both, w2 as rank 1, which has nothing to
  // run until rank 0 hosts the rendezvous.
  EXPECT_FALSE(Report("w2").has_assignment());
  auto job = store_->GetJob("ftjob-g");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_RUNNING);
  EXPECT_EQ(job->attempt(), 1);
  EXPECT_TRUE(AnyMessageHas(
      "ftjob-g",
      "Job started on 2 workers: w1 (rank 0), w2 (rank 1) (attempt 1)"));
  EXPECT_FALSE(Report("w2").has_assignment());

  const v1::WorkerDirective rank0 = Report("w1");
  ASSERT_TRUE(rank0.has_assignment());
  EXPECT_EQ(rank0.assignment().job_id(), "ftjob-g");
  EXPECT_EQ(rank0.assignment().attempt(), 1);
  EXPECT_EQ(rank0.assignment().rank(), 0);
  EXPECT_EQ(rank0.assignment().world_size(), 2);
  EXPECT_EQ(rank0.assignment().rendezvous(), "");
  EXPECT_EQ(rank0.assignment().job().devices(), 2);
  EXPECT_GT(rank0.lease_deadline_ms(), NowUnixMillis());
  // Rank 0 reports where its store listens; the host is the one its
  // stream comes from.
  v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  EXPECT_FALSE(Report("w1", &a0, "127.0.0.1").stop());
  EXPECT_FALSE(Report("w2").has_assignment());  // no rendezvous yet
  a0.set_rendezvous(":29500");
  EXPECT_FALSE(Report("w1", &a0, "127.0.0.1").stop());
  const v1::WorkerDirective rank1 = Report("w2");
  ASSERT_TRUE(rank1.has_assignment());
  EXPECT_EQ(rank1.assignment().rank(), 1);
  EXPECT_EQ(rank1.assignment().world_size(), 2);
  EXPECT_EQ(rank1.assignment().rendezvous(), "127.0.0.1:29500");
  EXPECT_EQ(rank1.assignment().attempt(), 1);
  EXPECT_EQ(rank1.assignment().job().SerializeAsString(),
            rank0.assignment().job().SerializeAsString());
  EXPECT_GT(rank1.lease_deadline_ms(), 0);

  // Rank 1's reports keep its lease; what else they carry is rank 0's to
  // report.
  v1::RunningAttempt a1 = Attempt("ftjob-g", 1, 1);
  a1.set_step(5);
  auto* e = a1.add_events();
  e->set_seq(1);
  e->mutable_event()->set_type("metrics");
  const v1::WorkerDirective d1 = Report("w2", &a1);
  EXPECT_FALSE(d1.stop());
  EXPECT_GT(d1.lease_deadline_ms(), 0);
  EXPECT_EQ(store_->GetJob("ftjob-g")->progress().steps_done(), 0);
  auto events = store_->ListEvents("ftjob-g", "", 100);
  ASSERT_TRUE(events.ok());
  for (const auto& ev : events->data) EXPECT_NE(ev.type(), "metrics");

  // Rank 0's success ends the job; rank 1's is acknowledged after it.
  UploadAdapter("ftjob-g");
  a0.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
  a0.mutable_outcome()->add_result_files("adapter_model.safetensors");
  EXPECT_TRUE(Report("w1", &a0).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_SUCCEEDED);
  a1.clear_events();
  EXPECT_TRUE(Report("w2", &a1).stop());  // the job is over
  a1.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
  const v1::WorkerDirective done = Report("w2", &a1);
  EXPECT_TRUE(done.outcome_recorded());
  EXPECT_FALSE(done.stop());
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Hours(1)), 0);
}

TEST_F(CoordinatorTest, ARendezvousOfABarePortTakesThePeersIpv6Host) {
  AddGang("ftjob-g", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  Report("w1");
  Report("w2");
  ASSERT_TRUE(Report("w1").has_assignment());
  v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  a0.set_rendezvous(":7000");
  Report("w1", &a0, "[::1]");
  EXPECT_EQ(Report("w2").assignment().rendezvous(), "[::1]:7000");
}

TEST_F(CoordinatorTest,
       RankZeroFailingWithItsGangRetriesButTheJobsFaultFailsIt) {
  AddGang("ftjob-g", 2);
  RunPair("ftjob-g");
  // Rank 0's collective lost its peer: not the job's fault, a new attempt.
  v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  a0.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_FAILED);
  a0.mutable_outcome()->mutable_error()->set_code("training_error");
  a0.mutable_outcome()->mutable_error()->set_message("another rank was lost");
  EXPECT_TRUE(Report("w1", &a0).outcome_recorded());
  auto job = store_->GetJob("ftjob-g");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(job->failed_attempts(), 1);
  EXPECT_TRUE(AnyMessageHas(
      "ftjob-g", "Worker w1 (rank 0) failed: another rank was lost"));
  const v1::RunningAttempt a1 = Attempt("ftjob-g", 1, 1);
  EXPECT_TRUE(Report("w2", &a1).stop());

  // Attempt 2: rank 1 finds bad data, the job's fault: it fails at once.
  ASSERT_TRUE(store_
                  ->Transition("ftjob-g", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 2, .worker_id = "w1"})
                  .ok());
  v1::RunningAttempt bad = Attempt("ftjob-g", 2, 1);
  bad.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_FAILED);
  bad.mutable_outcome()->mutable_error()->set_code("invalid_training_file");
  bad.mutable_outcome()->mutable_error()->set_message("line 3: not JSON");
  bad.mutable_outcome()->mutable_error()->set_user_fault(true);
  EXPECT_TRUE(Report("w2", &bad).outcome_recorded());
  job = store_->GetJob("ftjob-g");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_FAILED);
  EXPECT_EQ(job->error().code(), "invalid_training_file");
  EXPECT_TRUE(job->error().user_fault());
  EXPECT_EQ(job->failed_attempts(), 1);
}

TEST_F(CoordinatorTest, ARanksFailureRequeuesTheJobAndStopsRankZero) {
  AddGang("ftjob-g", 2);
  RunPair("ftjob-g");
  v1::RunningAttempt a1 = Attempt("ftjob-g", 1, 1);
  a1.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_FAILED);
  a1.mutable_outcome()->mutable_error()->set_message(
      "data-parallel all-reduce failed on rank 1");
  EXPECT_TRUE(Report("w2", &a1).outcome_recorded());
  auto job = store_->GetJob("ftjob-g");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(job->failed_attempts(), 1);
  EXPECT_TRUE(AnyMessageHas(
      "ftjob-g",
      "Worker w2 (rank 1) failed: data-parallel all-reduce failed on rank 1; "
      "attempt 1 failed (1 of 2 allowed)"));
  // Rank 0 is told to stop; no lease of the attempt is left to expire.
  const v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  const v1::WorkerDirective d0 = Report("w1", &a0);
  EXPECT_TRUE(d0.stop());
  EXPECT_EQ(d0.stop_reason(), "job is queued");
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Hours(1)), 0);
  EXPECT_TRUE(Report("w2", &a1).outcome_recorded());  // repeated: harmless
  EXPECT_EQ(store_->GetJob("ftjob-g")->failed_attempts(), 1);

  // A second failure (max_attempts 2) fails the job with the rank's error.
  ASSERT_TRUE(store_
                  ->Transition("ftjob-g", v1::JOB_STATUS_QUEUED,
                               v1::JOB_STATUS_RUNNING, std::nullopt,
                               {.attempt = 2, .worker_id = "w1"})
                  .ok());
  a1.set_attempt(2);
  a1.mutable_outcome()->mutable_error()->set_code("rendezvous_failed");
  EXPECT_TRUE(Report("w2", &a1).outcome_recorded());
  job = store_->GetJob("ftjob-g");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_FAILED);
  EXPECT_EQ(job->error().code(), "rendezvous_failed");
  EXPECT_NE(job->error().message().find("rank 1 (worker w2) failed"),
            std::string::npos)
      << job->error().message();
}

TEST_F(CoordinatorTest, ARanksLostLeaseFailsTheAttemptAndTheJobResumes) {
  AddGang("ftjob-g", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  Report("w1");
  Report("w2");
  Report("w1");  // rank 0's assignment
  v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  a0.set_rendezvous(":29500");
  Report("w1", &a0, "127.0.0.1");
  const int64_t rank1_deadline = Report("w2").lease_deadline_ms();
  ASSERT_GT(rank1_deadline, 0);
  // Rank 0 keeps reporting; rank 1 falls silent.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int64_t rank0_deadline = Report("w1", &a0).lease_deadline_ms();
  ASSERT_GT(rank0_deadline, rank1_deadline + 1);
  const absl::Time between =
      absl::FromUnixMillis(rank1_deadline) + absl::Milliseconds(1);
  EXPECT_EQ(coord_->SweepExpiredLeases(between), 1);
  auto job = store_->GetJob("ftjob-g");
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(job->failed_attempts(), 1);
  EXPECT_TRUE(AnyMessageHas("ftjob-g",
                            "Worker w2 (rank 1) stopped reporting (lease "
                            "expired); attempt 1 failed"));
  // Rank 0 is told to stop, and its lease went with the attempt.
  EXPECT_TRUE(Report("w1", &a0).stop());
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Hours(1)), 0);
  // A late expiry cannot move the job again.
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_QUEUED);
}

TEST_F(CoordinatorTest, AMemberThatNeverShowsUpFailsTheAttempt) {
  AddGang("ftjob-g", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  Report("w2");
  Report("w1");  // starts it, as rank 0: assigned at once
  ASSERT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_RUNNING);
  coord_->WorkerDisconnected("w2");
  EXPECT_GE(coord_->SweepExpiredLeases(absl::Now() + absl::Seconds(11)), 1);
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_QUEUED);
}

TEST_F(CoordinatorTest, ACommittedMemberIsNotGivenAnotherJob) {
  AddGang("ftjob-g", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  gib_["w3"] = 32;
  Report("w1");
  EXPECT_FALSE(Report("w2").has_assignment());  // rank 1, waiting
  AddJob("ftjob-s");
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(Report("w2").has_assignment());
  }
  for (const scheduler::WorkerInfo& w : coord_->Fleet()) {
    if (w.worker_id == "w2") EXPECT_FALSE(w.idle);
  }
  EXPECT_EQ(Report("w1").assignment().job_id(), "ftjob-g");  // rank 0
  EXPECT_EQ(Report("w3").assignment().job_id(), "ftjob-s");
}

TEST_F(CoordinatorTest, CancelAndPauseReachEveryRank) {
  AddGang("ftjob-g", 2);
  RunPair("ftjob-g");
  ASSERT_TRUE(coord_->PauseJob("ftjob-g").ok());
  v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  v1::RunningAttempt a1 = Attempt("ftjob-g", 1, 1);
  for (const auto& [worker, a] : {std::pair{"w1", &a0}, {"w2", &a1}}) {
    const v1::WorkerDirective d = Report(worker, a);
    EXPECT_TRUE(d.stop()) << worker;
    EXPECT_TRUE(d.checkpoint_before_stop()) << worker;
  }
  // Rank 1 stops first; the attempt lives on while rank 0 checkpoints,
  // even once rank 1's lease is gone.
  a1.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  EXPECT_TRUE(Report("w2", &a1).outcome_recorded());
  EXPECT_TRUE(coord_->CheckCurrentAttempt("ftjob-g", 1).ok());
  a0.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  a0.set_step(3);
  EXPECT_TRUE(Report("w1", &a0).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_PAUSED);
  EXPECT_FALSE(coord_->CheckCurrentAttempt("ftjob-g", 1).ok());

  // Resumed, it runs as attempt 2 (on whichever workers); then cancelled.
  ASSERT_TRUE(coord_->ResumeJob("ftjob-g").ok());
  Report("w2");
  const v1::WorkerDirective rank0 = Report("w1");
  ASSERT_TRUE(rank0.has_assignment());
  EXPECT_EQ(rank0.assignment().attempt(), 2);
  a0 = Attempt("ftjob-g", 2);
  a0.set_rendezvous("w1.cluster:29500");
  Report("w1", &a0, "10.0.0.1");
  const v1::WorkerDirective rank1 = Report("w2");
  EXPECT_EQ(rank1.assignment().rendezvous(), "w1.cluster:29500");
  ASSERT_TRUE(coord_->CancelJob("ftjob-g").ok());
  a1 = Attempt("ftjob-g", 2, 1);
  EXPECT_TRUE(Report("w2", &a1).stop());
  EXPECT_FALSE(Report("w2", &a1).checkpoint_before_stop());
  a1.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_CANCELLED);
  EXPECT_TRUE(Report("w2", &a1).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_CANCELLING);
  EXPECT_TRUE(Report("w1", &a0).stop());
  a0.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_CANCELLED);
  EXPECT_TRUE(Report("w1", &a0).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_CANCELLED);
}

TEST_F(CoordinatorTest,
       AMemberOfAGangCancelledWhilePausedIsFreedWithItsAttempt) {
  AddGang("ftjob-g", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  Report("w1");
  Report("w2");  // started; w2 waits as rank 1
  ASSERT_TRUE(Report("w1").has_assignment());
  ASSERT_TRUE(coord_->PauseJob("ftjob-g").ok());
  ASSERT_TRUE(coord_->CancelJob("ftjob-g").ok());
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_CANCELLED);
  AddJob("ftjob-s");
  EXPECT_FALSE(Report("w2").has_assignment());  // still the gang's
  const v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  EXPECT_TRUE(Report("w1", &a0).stop());
  // Rank 0 stops reporting: its lease ends the attempt, and w2 is free.
  EXPECT_GE(coord_->SweepExpiredLeases(absl::Now() + absl::Seconds(11)), 1);
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_CANCELLED);
  EXPECT_EQ(Report("w2").assignment().job_id(), "ftjob-s");
}

TEST_F(CoordinatorTest, TwoGangsOnTooFewWorkersForBothRunOneAfterTheOther) {
  AddGang("ftjob-a", 2);
  AddGang("ftjob-b", 2);
  gib_["w1"] = 8;
  gib_["w2"] = 16;
  gib_["w3"] = 32;
  Report("w1");
  Report("w2");  // ftjob-a starts on w1 (rank 0) and w2
  EXPECT_FALSE(Report("w3").has_assignment());  // ftjob-b needs two
  EXPECT_EQ(store_->GetJob("ftjob-a")->status(), v1::JOB_STATUS_RUNNING);
  EXPECT_EQ(store_->GetJob("ftjob-b")->status(), v1::JOB_STATUS_QUEUED);
  ASSERT_EQ(Report("w1").assignment().job_id(), "ftjob-a");
  v1::RunningAttempt a0 = Attempt("ftjob-a", 1);
  a0.set_rendezvous(":1");
  Report("w1", &a0, "127.0.0.1");
  ASSERT_EQ(Report("w2").assignment().job_id(), "ftjob-a");
  v1::RunningAttempt a1 = Attempt("ftjob-a", 1, 1);
  Report("w2", &a1);
  EXPECT_FALSE(Report("w3").has_assignment());  // still waits

  UploadAdapter("ftjob-a");
  a0.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
  a0.mutable_outcome()->add_result_files("adapter_model.safetensors");
  ASSERT_TRUE(Report("w1", &a0).outcome_recorded());
  a1.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
  ASSERT_TRUE(Report("w2", &a1).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-a")->status(), v1::JOB_STATUS_SUCCEEDED);

  // Freed, w1 takes ftjob-b with w3, the worker ftjob-b has waited on (w2
  // has not reported idle yet): w1, the smaller, is rank 0.
  const v1::WorkerDirective b0 = Report("w1");
  ASSERT_TRUE(b0.has_assignment());
  EXPECT_EQ(b0.assignment().job_id(), "ftjob-b");
  EXPECT_EQ(b0.assignment().rank(), 0);
  EXPECT_EQ(store_->GetJob("ftjob-b")->status(), v1::JOB_STATUS_RUNNING);
  v1::RunningAttempt b = Attempt("ftjob-b", 1);
  b.set_rendezvous(":2");
  Report("w1", &b, "127.0.0.1");
  EXPECT_FALSE(Report("w2").has_assignment());
  const v1::WorkerDirective b1 = Report("w3");
  ASSERT_TRUE(b1.has_assignment());
  EXPECT_EQ(b1.assignment().job_id(), "ftjob-b");
  EXPECT_EQ(b1.assignment().rank(), 1);
  EXPECT_EQ(b1.assignment().rendezvous(), "127.0.0.1:2");
}

TEST_F(CoordinatorTest, AGangsRanksReportBackAfterARestart) {
  AddGang("ftjob-g", 2);
  RunPair("ftjob-g");
  CoordinatorOptions o;
  o.lease_ttl = absl::Seconds(10);
  o.max_attempts = 2;
  coord_ = *Coordinator::Create(*store_, o);  // lathed restarted
  // Rank 1 reports first: it gets its lease back, and runs on.
  v1::RunningAttempt a1 = Attempt("ftjob-g", 1, 1);
  const v1::WorkerDirective d1 = Report("w2", &a1);
  EXPECT_FALSE(d1.stop());
  EXPECT_GT(d1.lease_deadline_ms(), NowUnixMillis());
  v1::RunningAttempt a0 = Attempt("ftjob-g", 1);
  a0.set_rendezvous(":29500");
  EXPECT_FALSE(Report("w1", &a0, "127.0.0.1").stop());
  // Both leases are kept by their reports; rank 1's loss still fails the
  // attempt.
  a1.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_FAILED);
  a1.mutable_outcome()->mutable_error()->set_message("rank 1 lost its peer");
  EXPECT_TRUE(Report("w2", &a1).outcome_recorded());
  EXPECT_EQ(store_->GetJob("ftjob-g")->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_TRUE(Report("w1", &a0).stop());
  EXPECT_EQ(coord_->SweepExpiredLeases(absl::Now() + absl::Hours(1)), 0);
}

TEST_F(CoordinatorTest, AHigherClassPreemptsTheLowerOnceWithinTheGrace) {
  CoordinatorOptions o;
  o.lease_ttl = absl::Seconds(10);
  o.replan_interval = absl::ZeroDuration();
  coord_ = *Coordinator::Create(*store_, o);
  auto add = [&](const std::string& id, v1::JobPriority p) {
    v1::Job j;
    j.set_id(id);
    j.set_status(v1::JOB_STATUS_QUEUED);
    j.set_model("tiny");
    j.set_priority(p);
    j.mutable_method()->mutable_supervised();
    ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  };
  add("ftjob-low", v1::JOB_PRIORITY_LOW);
  ASSERT_EQ(Report("w1").assignment().job_id(), "ftjob-low");
  v1::RunningAttempt low = Attempt("ftjob-low", 1);

  // A job of the same class waits: no preemption within a class.
  add("ftjob-low2", v1::JOB_PRIORITY_LOW);
  coord_->ConsiderPreemption(absl::Now());
  EXPECT_FALSE(Report("w1", &low).stop());

  // A high one stops it: checkpoint, then stop.
  add("ftjob-high", v1::JOB_PRIORITY_HIGH);
  coord_->ConsiderPreemption(absl::Now());
  v1::WorkerDirective d = Report("w1", &low);
  EXPECT_TRUE(d.stop());
  EXPECT_TRUE(d.checkpoint_before_stop());
  EXPECT_EQ(d.stop_reason(), "preempted by ftjob-high");
  EXPECT_TRUE(AnyMessageHas("ftjob-low", "Preempted by ftjob-high"));
  EXPECT_TRUE(AnyMessageHas("ftjob-high", "preempting ftjob-low"));
  // Its hand-back requeues it, and is not a failure.
  low.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_STOPPED);
  EXPECT_TRUE(Report("w1", &low).outcome_recorded());
  auto requeued = store_->GetJob("ftjob-low");
  EXPECT_EQ(requeued->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(requeued->failed_attempts(), 0);
  EXPECT_TRUE(AnyMessageHas("ftjob-low", "handed back; queued again"));
  // The freed worker is the high job's.
  d = Report("w1");
  ASSERT_TRUE(d.has_assignment());
  EXPECT_EQ(d.assignment().job_id(), "ftjob-high");
  v1::RunningAttempt high = Attempt("ftjob-high", 1);
  UploadAdapter("ftjob-high");
  high.mutable_outcome()->set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
  high.mutable_outcome()->add_result_files("adapter_model.safetensors");
  EXPECT_TRUE(Report("w1", &high).outcome_recorded());

  // Then the low job, in its old place (before ftjob-low2), from attempt 2;
  // another high job does not preempt it again within the grace period.
  d = Report("w1");
  ASSERT_TRUE(d.has_assignment());
  EXPECT_EQ(d.assignment().job_id(), "ftjob-low");
  EXPECT_EQ(d.assignment().attempt(), 2);
  add("ftjob-high2", v1::JOB_PRIORITY_HIGH);
  coord_->ConsiderPreemption(absl::Now());
  v1::RunningAttempt again = Attempt("ftjob-low", 2);
  EXPECT_FALSE(Report("w1", &again).stop());
  EXPECT_EQ(store_->GetJob("ftjob-high2")->status(), v1::JOB_STATUS_QUEUED);
}

TEST_F(CoordinatorTest, PreemptionOffLeavesRunningJobsAlone) {
  CoordinatorOptions o;
  o.replan_interval = absl::ZeroDuration();
  o.preemption = false;
  coord_ = *Coordinator::Create(*store_, o);
  AddJob("ftjob-a");  // normal
  ASSERT_TRUE(Report("w1").has_assignment());
  v1::Job j;
  j.set_id("ftjob-h");
  j.set_status(v1::JOB_STATUS_QUEUED);
  j.set_model("tiny");
  j.set_priority(v1::JOB_PRIORITY_HIGH);
  j.mutable_method()->mutable_supervised();
  ASSERT_TRUE(store_->CreateJob(j, "", "").ok());
  coord_->ConsiderPreemption(absl::Now());
  v1::RunningAttempt a = Attempt("ftjob-a", 1);
  EXPECT_FALSE(Report("w1", &a).stop());
}

}  // namespace
}  // namespace lathe
