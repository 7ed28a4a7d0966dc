// The control plane with real processes: one lathed, several lathe-worker
// processes on loopback. Fair share between projects, pause and resume from
// a checkpoint, WatchJob re-attached mid-job, and a worker killed mid-job.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/job_state.h"
#include "server/store/database.h"
#include "tests/cluster.h"
#include "tests/job_history.h"

namespace lathe::testing {
namespace {

// Where in the server-wide order of events the job first moved to running.
// Event ids are numbered per job and tell nothing of that order, so it is
// read from lathed's database (rows are written in order).
int64_t StartSeq(Cluster& c, const std::string& job_id) {
  auto db = store::Database::Open(c.root() + "/data/lathe.db");
  EXPECT_TRUE(db.ok()) << db.status();
  if (!db.ok()) return INT64_MAX;
  auto q = (*db)->Prepare(
      "SELECT seq, data FROM events WHERE job_id = ? ORDER BY seq");
  EXPECT_TRUE(q.ok()) << q.status();
  if (!q.ok()) return INT64_MAX;
  q->Bind(1, job_id);
  while (q->Step().value_or(false)) {
    v1::JobEvent e;
    if (e.ParseFromString(q->ColumnBlob(1)) &&
        e.status() == v1::JOB_STATUS_RUNNING) {
      return q->ColumnInt(0);
    }
  }
  return INT64_MAX;
}

bool Finished(const v1::Job& j) { return IsTerminal(j.status()); }

TEST(ControlPlaneTest, TwoProjectsShareWorkersFairly) {
  auto cluster = Cluster::Start(TestRoot("cp-fair"), 2);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto a = c.ClientFor("team-a");
  auto b = c.ClientFor("team-b");
  auto fa = a->UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  auto fb = b->UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(fa.ok() && fb.ok());

  // 200 steps each: team A's running jobs cannot finish (and A's next ones
  // start) in the moment before team B submits, on any machine (40 steps
  // once fitted in it on a fast one).
  constexpr int kEpochs = 10;
  std::vector<std::string> a_jobs, b_jobs;
  for (int i = 0; i < 6; ++i) {
    v1::CreateJobRequest r = DemoJob(fa->id(), kEpochs);
    if (i % 2 == 0) (*r.mutable_metadata())["sweep"] = "lr";
    auto j = a->CreateJob(r);
    ASSERT_TRUE(j.ok()) << j.status();
    EXPECT_EQ(j->project(), "team-a");
    a_jobs.push_back(j->id());
  }
  // Team A fills both workers before team B submits anything.
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(WaitForJob(*a, a_jobs[i], [](const v1::Job& j) {
                  return j.status() != v1::JOB_STATUS_QUEUED;
                }).ok()) << c.Logs();
  }
  for (int i = 0; i < 2; ++i) {
    auto j = b->CreateJob(DemoJob(fb->id(), kEpochs));
    ASSERT_TRUE(j.ok()) << j.status();
    b_jobs.push_back(j->id());
  }
  // A project's queue position counts its own queued jobs only (team A's
  // four queued jobs are not B's to see), in the scheduler's order.
  // (Read B's second job first: if its first is still queued after, it
  // was before too.)
  auto b1 = b->GetJob(b_jobs[1]);
  auto b0 = b->GetJob(b_jobs[0]);
  ASSERT_TRUE(b0.ok() && b1.ok());
  if (b1->status() == v1::JOB_STATUS_QUEUED) {
    if (b0->status() == v1::JOB_STATUS_QUEUED) {
      EXPECT_EQ(b0->queue_position(), 1);
      EXPECT_EQ(b1->queue_position(), 2);
    } else {
      EXPECT_TRUE(b1->queue_position() == 1 || b1->queue_position() == 2) << b1->queue_position();
    }
  }
  for (const auto& id : a_jobs)
    ASSERT_TRUE(WaitForJob(*a, id, Finished).ok()) << c.Logs();
  for (const auto& id : b_jobs)
    ASSERT_TRUE(WaitForJob(*b, id, Finished).ok()) << c.Logs();

  // First-in-first-out would start both of B's jobs after all six of A's.
  // Fair share gives B a worker as soon as B runs fewer jobs than A (ties go
  // to the older job): B's first job starts before A's fourth, its second
  // before A's fifth, however the workers' finishing times interleave.
  EXPECT_LT(StartSeq(c, b_jobs[0]), StartSeq(c, a_jobs[3])) << c.Logs();
  EXPECT_LT(StartSeq(c, b_jobs[1]), StartSeq(c, a_jobs[4])) << c.Logs();
  for (const auto& id : b_jobs) {
    EXPECT_EQ(b->GetJob(id)->status(), v1::JOB_STATUS_SUCCEEDED);
  }
  // Listing filters by metadata.
  v1::ListJobsRequest sweep;
  (*sweep.mutable_metadata())["sweep"] = "lr";
  auto listed = a->ListJobs(sweep);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->data_size(), 3);
  (*sweep.mutable_metadata())["sweep"] = "other";
  EXPECT_EQ(a->ListJobs(sweep)->data_size(), 0);
}

TEST(ControlPlaneTest, PauseCheckpointsAndResumeContinues) {
  auto cluster = Cluster::Start(TestRoot("cp-pause"), 2, {"--checkpoint_every_steps=5"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok());
  // 1,000 steps: still training when it is acted on at step 12, on any
  // machine (400 once left a fast one under half a second).
  auto job = c.client().CreateJob(DemoJob(file->id(), 50));
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
                return j.progress().steps_done() >= 12;
              }).ok()) << c.Logs();

  auto paused = c.client().PauseJob(job->id());
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->status(), v1::JOB_STATUS_PAUSED);
  // The worker checkpoints and stops; until then resume is refused.
  int64_t paused_at = 0;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (paused_at == 0 && absl::Now() < deadline) {
    for (const auto& e : AllEvents(c.client(), job->id())) {
      if (absl::StartsWith(e.message(), "Paused at step ")) {
        ASSERT_TRUE(absl::SimpleAtoi(e.message().substr(15, e.message().find(';') - 15),
                                     &paused_at));
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_GT(paused_at, 0) << c.Logs();
  auto checkpoints = c.client().ListJobCheckpoints(job->id());
  ASSERT_TRUE(checkpoints.ok());
  ASSERT_GE(checkpoints->data_size(), 2);
  EXPECT_EQ(checkpoints->data().rbegin()->step_number(), paused_at);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(c.client().GetJob(job->id())->progress().steps_done(), paused_at);

  // A checkpoint downloads as a PEFT adapter plus trainer state.
  auto files = c.client().DownloadCheckpoint(job->id(), paused_at, c.root() + "/ckpt", nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  bool has_adapter = false;
  for (const auto& f : *files) has_adapter |= absl::EndsWith(f, "adapter_model.safetensors");
  EXPECT_TRUE(has_adapter);

  ASSERT_TRUE(c.client().ResumeJob(job->id()).ok());
  auto done = WaitForJob(c.client(), job->id(), Finished);
  ASSERT_TRUE(done.ok()) << c.Logs();
  EXPECT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  // The second attempt started from the pause checkpoint: its first
  // metrics step is the one after it.
  int64_t first_step_after_resume = 0;
  bool resumed = false;
  for (const auto& e : AllEvents(c.client(), job->id())) {
    if (absl::StrContains(e.message(), "Resuming from the checkpoint at step " +
                                           std::to_string(paused_at))) {
      resumed = true;
    } else if (resumed && e.type() == "metrics" && first_step_after_resume == 0) {
      first_step_after_resume = e.metrics().step();
    }
  }
  EXPECT_TRUE(resumed) << c.Logs();
  EXPECT_EQ(first_step_after_resume, paused_at + 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(c.client().ResumeJob(job->id()).status()));
}

TEST(ControlPlaneTest, WatchReattachedMidJobMissesAndRepeatsNothing) {
  auto cluster = Cluster::Start(TestRoot("cp-watch"), 2);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok());
  // Several 400 ms attachments long on any machine (6 epochs once took
  // under a second).
  auto job = c.client().CreateJob(DemoJob(file->id(), 40));
  ASSERT_TRUE(job.ok());
  std::vector<std::string> seen;
  std::string cursor;
  int attaches = 0;
  while (true) {
    ++attaches;
    // Each attachment is cut after a short while, mid-job.
    auto st = c.client().WatchJob(
        job->id(), cursor,
        [&](const v1::WatchJobResponse& u) {
          seen.push_back(u.event().id());
          cursor = u.event().id();
        },
        absl::Now() + absl::Milliseconds(400));
    if (st.ok()) break;
    ASSERT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    ASSERT_LT(attaches, 200);
  }
  EXPECT_GT(attaches, 2);
  std::vector<std::string> all;
  for (const auto& e : AllEvents(c.client(), job->id())) all.push_back(e.id());
  EXPECT_EQ(seen, all);
  EXPECT_EQ(c.client().GetJob(job->id())->status(), v1::JOB_STATUS_SUCCEEDED);
}

TEST(ControlPlaneTest, WorkerKilledMidJobResumesOnTheOtherWorker) {
  auto cluster = Cluster::Start(TestRoot("cp-kill"), 2, {"--checkpoint_every_steps=5"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok());
  // 1,000 steps: still training when it is acted on at step 12, on any
  // machine (400 once left a fast one under half a second).
  auto job = c.client().CreateJob(DemoJob(file->id(), 50));
  ASSERT_TRUE(job.ok());
  auto running = WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
    return j.progress().steps_done() >= 12;
  });
  ASSERT_TRUE(running.ok()) << c.Logs();
  int victim = -1;
  for (const auto& e : AllEvents(c.client(), job->id())) {
    if (absl::StartsWith(e.message(), "Job started on worker worker-")) {
      victim = e.message()[std::string("Job started on worker worker-").size()] - '0';
    }
  }
  ASSERT_GE(victim, 0);
  c.worker(victim).Signal(SIGKILL);
  int64_t killed_at = c.client().GetJob(job->id())->progress().steps_done();

  auto done = WaitForJob(c.client(), job->id(), Finished);
  ASSERT_TRUE(done.ok()) << c.Logs();
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  EXPECT_EQ(done->attempt(), 2);
  int64_t resumed_from = -1;
  bool lease_expired = false;
  for (const auto& e : AllEvents(c.client(), job->id())) {
    lease_expired |= absl::StrContains(e.message(), "stopped reporting");
    const std::string kResume = "Resuming from the checkpoint at step ";
    if (absl::StartsWith(e.message(), kResume)) {
      std::string rest = e.message().substr(kResume.size());
      ASSERT_TRUE(absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &resumed_from));
      EXPECT_TRUE(absl::StrContains(e.message(), "worker-" + std::to_string(1 - victim)));
    }
  }
  EXPECT_TRUE(lease_expired);
  ASSERT_GT(resumed_from, 0) << c.Logs();
  // At most one checkpoint interval of work was lost.
  EXPECT_GE(resumed_from, killed_at - 5);
}

TEST(ControlPlaneTest, ModelsRegisteredAndFetchedByWorkersThatCannotReadThem) {
  auto cluster = Cluster::Start(TestRoot("cp-models"), 0);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  // A worker that never reads the server's folders fetches the model.
  c.AddWorker({"--model_source=server"});
  // Registering is an operator's call.
  auto user = c.client().RegisterModel("mine", c.demo_dir() + "/model");
  EXPECT_TRUE(absl::IsPermissionDenied(user.status())) << user.status();
  auto bad = c.admin().RegisterModel("broken", c.root());
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "config.json"));
  auto again = c.admin().RegisterModel("lathe-demo", c.root() + "/elsewhere");
  EXPECT_FALSE(again.ok());
  auto model = c.client().GetModel("lathe-demo");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->architecture(), "LlamaForCausalLM");
  EXPECT_GT(model->parameter_count(), 0);
  EXPECT_EQ(model->content_sha256().size(), 64u);

  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok());
  auto job = c.client().CreateJob(DemoJob(file->id(), 1));
  ASSERT_TRUE(job.ok());
  auto done = WaitForJob(c.client(), job->id(), Finished);
  ASSERT_TRUE(done.ok()) << c.Logs();
  EXPECT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  EXPECT_TRUE(std::filesystem::exists(c.root() + "/worker-0/models/" +
                                      model->content_sha256() + "/.complete"));
  auto listed = c.client().ListModels();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->data_size(), 2);  // the base and the fine-tuned model
  EXPECT_EQ(listed->data(1).id(), done->fine_tuned_model());
  EXPECT_EQ(listed->data(1).kind(), "fine-tuned");
}

}  // namespace
}  // namespace lathe::testing
