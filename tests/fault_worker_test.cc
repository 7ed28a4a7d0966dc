// Workers failing with real processes on loopback: lathe-worker killed with
// SIGKILL at random points of many jobs, and a worker frozen with SIGSTOP
// (a hung connection). lathed must notice within its lease, hand the job
// to another worker that resumes from the latest checkpoint, refuse
// anything the dead attempt still says, and take the frozen worker back
// once it wakes.
#include <signal.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_state.h"
#include "tests/cluster.h"
#include "tests/fault_util.h"

namespace lathe::testing {
namespace {

constexpr int kCheckpointEvery = 5;  // --checkpoint_every_steps
constexpr int kLeaseSeconds = 4;     // Cluster's --lease_seconds
constexpr int kSweepSeconds = 1;     // lathed's lease sweep interval

int WorkerIndex(const std::string& worker_id) {
  return std::stoi(worker_id.substr(worker_id.rfind('-') + 1));
}

// The worker running the job's current attempt, from its events.
std::string CurrentWorker(Client& c, const std::string& job_id) {
  auto attempts = Attempts(AllEvents(c, job_id));
  return attempts.empty() ? "" : attempts.back().worker_id;
}

// What a finished job's history says of its lost attempts.
struct Recovery {
  std::vector<int64_t> steps_lost;  // per attempt that lost its lease
  int resumed_from_latest = 0;      // the next attempt went on from the latest checkpoint
};

// Checks that every attempt that lost its lease was followed by one that
// resumed from the newest checkpoint recorded before it, went on from the
// next step, and lost at most one checkpoint interval: the last step the
// dead attempt reported minus the step the next one resumed from.
Recovery CheckRecovery(const std::vector<AttemptHistory>& attempts,
                       const std::string& job_id) {
  Recovery r;
  for (size_t i = 0; i + 1 < attempts.size(); ++i) {
    const AttemptHistory& dead = attempts[i];
    const AttemptHistory& next = attempts[i + 1];
    if (!dead.lease_expired) continue;
    bool resumed = next.resumed_from == dead.latest_checkpoint &&
                   (next.steps.empty() || next.steps.front() == next.resumed_from + 1);
    EXPECT_TRUE(resumed) << job_id << " attempt " << next.attempt << " resumed from step "
                         << next.resumed_from << ", latest checkpoint "
                         << dead.latest_checkpoint;
    r.resumed_from_latest += resumed ? 1 : 0;
    int64_t lost = dead.last_step() - next.resumed_from;
    EXPECT_GE(lost, 0) << job_id;
    EXPECT_LE(lost, kCheckpointEvery) << job_id << " attempt " << dead.attempt;
    r.steps_lost.push_back(lost);
  }
  return r;
}

TEST(WorkerFaultTest, KilledAtRandomPointsJobsResumeFromCheckpoints) {
  const std::string kSuite = "worker-sigkill";
  std::mt19937 rng(FaultSeed(kSuite, 20261126));
  constexpr int kJobs = 22;
  // 400 steps: a job is still training when its kill lands on any machine
  // (40 left a fast one a few tens of milliseconds past the latest kill).
  constexpr int kEpochs = 20;
  auto cluster = Cluster::Start(
      TestRoot("fault-worker-kill"), 3,
      {absl::StrCat("--checkpoint_every_steps=", kCheckpointEvery), "--max_attempts=6"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();

  // Each job's first attempt dies at a random step after its first
  // checkpoint (the kill lands wherever the worker is: mid-step, mid-upload,
  // mid-report).
  std::map<std::string, int64_t> kill_at;
  std::vector<std::string> jobs;
  for (int i = 0; i < kJobs; ++i) {
    auto job = c.client().CreateJob(DemoJob(file->id(), kEpochs));
    ASSERT_TRUE(job.ok()) << job.status();
    jobs.push_back(job->id());
    kill_at[job->id()] = std::uniform_int_distribution<int64_t>(
        kCheckpointEvery + 1, 32)(rng);
  }
  std::set<std::string> killed;
  std::vector<std::string> killed_jobs;
  absl::Time deadline = absl::Now() + absl::Minutes(5);
  absl::Time next_full_check = absl::Now();
  int finished = 0;
  while (finished < kJobs && absl::Now() < deadline) {
    v1::ListJobsRequest running;
    running.set_status(v1::JOB_STATUS_RUNNING);
    running.set_limit(100);
    auto page = c.client().ListJobs(running);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const v1::Job& j : page->data()) {
      if (j.attempt() != 1 || killed.count(j.id()) ||
          j.progress().steps_done() < kill_at[j.id()]) {
        continue;
      }
      std::string worker = CurrentWorker(c.client(), j.id());
      ASSERT_FALSE(worker.empty());
      int w = WorkerIndex(worker);
      c.worker(w).Signal(SIGKILL);
      c.worker(w).Wait(absl::Seconds(10));
      killed.insert(j.id());
      killed_jobs.push_back(j.id());
      c.AddWorker();
    }
    if (absl::Now() >= next_full_check) {
      finished = 0;
      for (const std::string& id : jobs) {
        auto j = c.client().GetJob(id);
        finished += j.ok() && IsTerminal(j->status()) ? 1 : 0;
      }
      next_full_check = absl::Now() + absl::Seconds(1);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(finished, kJobs) << "jobs still running at the deadline\n" << c.Logs();

  // Late messages of a killed attempt (as a worker that lost its lease
  // would still send them) are refused and change nothing.
  int refused = 0;
  for (size_t i = 0; i < std::min<size_t>(3, killed_jobs.size()); ++i) {
    auto attempts = Attempts(AllEvents(c.client(), killed_jobs[i]));
    ASSERT_FALSE(attempts.empty());
    refused += ExpectAttemptFenced(c, killed_jobs[i], 1, attempts.front().worker_id);
  }

  int succeeded = 0, resumed = 0;
  std::vector<int64_t> lost;  // per lost attempt
  for (const std::string& id : jobs) {
    auto job = c.client().GetJob(id);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(job->status(), v1::JOB_STATUS_SUCCEEDED) << id << "\n" << c.Logs();
    succeeded += job->status() == v1::JOB_STATUS_SUCCEEDED ? 1 : 0;
    auto attempts = Attempts(AllEvents(c.client(), id));
    ASSERT_FALSE(attempts.empty()) << id;
    EXPECT_EQ(attempts.back().last_step(), 20 * kEpochs) << id;
    if (killed.count(id)) {
      EXPECT_TRUE(attempts.front().lease_expired) << id;
      EXPECT_GE(attempts.size(), 2u) << id;
    }
    Recovery r = CheckRecovery(attempts, id);
    lost.insert(lost.end(), r.steps_lost.begin(), r.steps_lost.end());
    resumed += r.resumed_from_latest;
  }
  // Each kill is a run. (An attempt that lost its lease unasked, on a slow
  // machine, is checked the same way.)
  EXPECT_GE(static_cast<int>(killed.size()), 20)
      << "only " << killed.size() << " jobs were caught mid-run";
  EXPECT_GE(static_cast<int>(lost.size()), static_cast<int>(killed.size()));
  int64_t max_lost = lost.empty() ? 0 : *std::max_element(lost.begin(), lost.end());
  double mean_lost = 0;
  for (int64_t n : lost) mean_lost += static_cast<double>(n) / lost.size();
  Figure(kSuite, "workers killed (SIGKILL, random step)", absl::StrCat(killed.size()));
  Figure(kSuite, "jobs succeeded", absl::StrCat(succeeded, "/", kJobs));
  Figure(kSuite, "attempts resumed from the latest checkpoint",
         absl::StrCat(resumed, "/", lost.size()));
  Figure(kSuite, "steps lost per dead attempt",
         absl::StrFormat("max %d, mean %.1f (checkpoint interval %d)", max_lost,
                         mean_lost, kCheckpointEvery));
  Figure(kSuite, "late messages of dead attempts refused",
         absl::StrCat(refused, "/", 5 * std::min<size_t>(3, killed_jobs.size())));
}

TEST(WorkerFaultTest, HungWorkerIsDetectedFencedOffAndRecovers) {
  const std::string kSuite = "worker-sigstop";
  std::mt19937 rng(FaultSeed(kSuite, 7));
  auto cluster = Cluster::Start(
      TestRoot("fault-worker-hang"), 2,
      {absl::StrCat("--checkpoint_every_steps=", kCheckpointEvery)});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  // 400 steps: still training when it is frozen, on any machine.
  constexpr int kSteps = 400;
  auto job = c.client().CreateJob(DemoJob(file->id(), kSteps / 20));
  ASSERT_TRUE(job.ok()) << job.status();
  int64_t freeze_at = std::uniform_int_distribution<int64_t>(kCheckpointEvery + 1, 30)(rng);
  ASSERT_TRUE(WaitForJob(c.client(), job->id(), [&](const v1::Job& j) {
                return j.progress().steps_done() >= freeze_at;
              }, absl::Minutes(2)).ok()) << c.Logs();
  std::string hung = CurrentWorker(c.client(), job->id());
  ASSERT_EQ(hung.rfind("worker-", 0), 0u) << hung;
  int hung_index = WorkerIndex(hung);

  // Frozen: its TCP connection stays open, it just says nothing more.
  absl::Time frozen = absl::Now();
  c.worker(hung_index).Signal(SIGSTOP);
  auto requeued = WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
    return j.status() != v1::JOB_STATUS_RUNNING || j.attempt() != 1;
  }, absl::Seconds(30));
  absl::Duration detection = absl::Now() - frozen;
  ASSERT_TRUE(requeued.ok()) << requeued.status() << "\n" << c.Logs();
  EXPECT_NE(requeued->status(), v1::JOB_STATUS_FAILED) << c.Logs();
  // The lease (renewed by every report, i.e. just before the freeze) runs
  // out after kLeaseSeconds; the sweep notices within kSweepSeconds.
  const absl::Duration kBound = absl::Seconds(kLeaseSeconds + kSweepSeconds + 2);
  EXPECT_LE(detection, kBound);
  EXPECT_GE(detection, absl::Seconds(kLeaseSeconds - 1));
  bool lease_event = false;
  for (const v1::JobEvent& e : AllEvents(c.client(), job->id())) {
    lease_event |= absl::StrContains(e.message(), "Worker " + hung + " stopped reporting");
  }
  EXPECT_TRUE(lease_event);

  // The other worker takes the job over from the latest checkpoint.
  auto taken = WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
    return j.attempt() == 2 && j.status() == v1::JOB_STATUS_RUNNING &&
           j.progress().steps_done() > 0;
  }, absl::Seconds(30));
  ASSERT_TRUE(taken.ok()) << taken.status() << "\n" << c.Logs();
  EXPECT_EQ(CurrentWorker(c.client(), job->id()), absl::StrCat("worker-", 1 - hung_index));
  // Whatever the frozen attempt says from now on is refused.
  int refused = ExpectAttemptFenced(c, job->id(), 1, hung);

  // It wakes while attempt 2 runs: its reports, events and uploads for
  // attempt 1 are refused; it drops the attempt and goes idle.
  c.worker(hung_index).Signal(SIGCONT);
  auto done = WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
    return IsTerminal(j.status());
  }, absl::Minutes(2));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << c.Logs();
  EXPECT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  EXPECT_EQ(done->attempt(), 2);
  auto attempts = Attempts(AllEvents(c.client(), job->id()));
  ASSERT_EQ(attempts.size(), 2u) << c.Logs();
  Recovery recovery = CheckRecovery(attempts, job->id());
  ASSERT_EQ(recovery.steps_lost.size(), 1u);
  // After the lease expired only attempt 2 was heard: its steps run from
  // the checkpoint to the end, once each, with nothing of attempt 1 between.
  std::vector<int64_t> expected;
  for (int64_t s = attempts[1].resumed_from + 1; s <= kSteps; ++s) expected.push_back(s);
  EXPECT_EQ(attempts[1].steps, expected);
  auto checkpoints = c.client().ListJobCheckpoints(job->id());
  ASSERT_TRUE(checkpoints.ok());
  for (const v1::Checkpoint& cp : checkpoints->data()) {
    if (cp.attempt() == 1) EXPECT_LE(cp.step_number(), attempts[0].last_step());
  }

  // It recovers: with the other worker gone, it alone takes the next job.
  c.worker(1 - hung_index).Signal(SIGTERM);
  EXPECT_EQ(c.worker(1 - hung_index).Wait(absl::Seconds(30)), 0);
  auto next = c.client().CreateJob(DemoJob(file->id(), 1));
  ASSERT_TRUE(next.ok()) << next.status();
  auto next_done = WaitForJob(c.client(), next->id(), [](const v1::Job& j) {
    return IsTerminal(j.status());
  }, absl::Minutes(2));
  ASSERT_TRUE(next_done.ok()) << next_done.status() << "\n" << c.Logs();
  EXPECT_EQ(next_done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  EXPECT_EQ(CurrentWorker(c.client(), next->id()), hung);
  std::string log = ReadFileOrEmpty(absl::StrCat(c.root(), "/worker-", hung_index, ".log"));
  EXPECT_TRUE(absl::StrContains(log, "attempt superseded")) << log;

  Figure(kSuite, "hung worker detected after",
         absl::StrFormat("%.2f s (bound: lease %d s + sweep %d s + 2 s slack)",
                         absl::ToDoubleSeconds(detection), kLeaseSeconds, kSweepSeconds));
  Figure(kSuite, "job", absl::StrCat(StatusName(done->status()), " on the other worker, ",
                                     recovery.steps_lost[0], " steps lost (checkpoint interval ",
                                     kCheckpointEvery, ")"));
  Figure(kSuite, "late messages of the hung attempt refused", absl::StrCat(refused, "/5"));
  Figure(kSuite, "hung worker after SIGCONT", "dropped its attempt, took and finished a new job");
}

}  // namespace
}  // namespace lathe::testing
