// Crash safety with real processes: lathed killed with SIGKILL at random
// moments while client threads upload files, create jobs and read events
// and checkpoints, and workers train. After each kill the crashed data
// directory is checked before the restart (SQLite integrity, every blob a
// record names whole); after the restart nothing a client was told is
// stored is missing, and lathed's start-up has removed every stray blob and
// partial upload the crash left. The workers reconnect by themselves and
// every job finishes.
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/job_state.h"
#include "common/sha256.h"
#include "tests/cluster.h"
#include "tests/fault_util.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

constexpr int kKills = 50;
constexpr int kWorkers = 2;
constexpr int kMaxJobs = 30;

// Holds the client threads still between a kill and the checks after the
// restart, and stops them at the end.
class Gate {
 public:
  explicit Gate(int threads) : threads_(threads) {}
  // Called by a client thread between operations: waits while paused.
  // False once stopped.
  bool Pass() {
    absl::MutexLock lock(&mu_);
    ++parked_;
    mu_.Await(absl::Condition(this, &Gate::Open));
    --parked_;
    return !stopped_;
  }
  // Returns once every thread waits in Pass().
  void Pause() {
    absl::MutexLock lock(&mu_);
    paused_ = true;
    mu_.Await(absl::Condition(this, &Gate::AllParked));
  }
  void Resume() {
    absl::MutexLock lock(&mu_);
    paused_ = false;
  }
  void Stop() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }

 private:
  bool Open() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !paused_ || stopped_; }
  bool AllParked() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return parked_ == threads_; }

  absl::Mutex mu_;
  const int threads_;
  int parked_ ABSL_GUARDED_BY(mu_) = 0;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

// Everything a client was told is stored, or saw stored.
struct Acknowledged {
  absl::Mutex mu;
  std::map<std::string, std::string> files ABSL_GUARDED_BY(mu);  // id -> sha256
  std::vector<std::string> jobs ABSL_GUARDED_BY(mu);
  // job -> event id -> message
  std::map<std::string, std::map<std::string, std::string>> events ABSL_GUARDED_BY(mu);
  // job -> step -> "name=sha256,..."
  std::map<std::string, std::map<int64_t, std::string>> checkpoints ABSL_GUARDED_BY(mu);
  int upload_errors ABSL_GUARDED_BY(mu) = 0;  // refused by a dead lathed
  int create_retries ABSL_GUARDED_BY(mu) = 0;
  int flood_jobs ABSL_GUARDED_BY(mu) =
      0;  // created (and cancelled) by the flood
};

std::string FilesOf(const v1::Checkpoint& cp) {
  std::vector<std::string> parts;
  for (const v1::ResultFile& f : cp.files()) parts.push_back(f.name() + "=" + f.sha256());
  std::sort(parts.begin(), parts.end());
  return absl::StrJoin(parts, ",");
}

// A client of the "default" project whose channel tries to reconnect every
// 100-500 ms: with gRPC's default backoff (1 s, growing to 2 min while
// connecting fails) it would sleep through the short uptimes between kills.
std::unique_ptr<Client> QuicklyReconnectingClient(Cluster& c) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  auto channel = MakeChannel(c.address(), c.client_tls(), args);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return std::make_unique<Client>(*channel, c.NewKey("default"));
}

// Passing failures while lathed is down or restarting; anything else is a
// real refusal.
bool ServerDown(const absl::Status& st) {
  return absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st) ||
         absl::IsCancelled(st) || absl::IsUnknown(st) || absl::IsInternal(st);
}

// Uploads files of distinct content (so each makes a new blob), one every
// few milliseconds.
void UploadLoop(Client& client, Gate& gate, Acknowledged& ack,
                const std::string& demo, const std::string& dir, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string base = ReadFileOrEmpty(demo + "/train.jsonl");
  fs::create_directories(dir);
  for (int n = 0; gate.Pass(); ++n) {
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(5, 25)(rng)));
    std::string path = absl::StrCat(dir, "/upload-", n, ".jsonl");
    std::ofstream(path) << base << "{\"messages\":[{\"role\":\"user\",\"content\":\"upload "
                        << n << "\"},{\"role\":\"assistant\",\"content\":\"stored " << n
                        << "\"}]}\n";
    auto sha = Sha256File(path);
    ASSERT_TRUE(sha.ok());
    auto f = client.UploadFile(path, "fine-tune", nullptr);
    if (f.ok()) {
      EXPECT_EQ(f->sha256(), *sha);
      absl::MutexLock lock(&ack.mu);
      ack.files[f->id()] = *sha;
      continue;
    }
    EXPECT_TRUE(ServerDown(f.status())) << f.status();
    {
      absl::MutexLock lock(&ack.mu);
      ++ack.upload_errors;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// Creates a job every so often from a stored file, each with an idempotency
// key, retrying the same request until lathed answers; until `creating`
// turns false. Sets `done` when it has stopped.
void CreateLoop(Client& client, Gate& gate, Acknowledged& ack, uint32_t seed,
                const std::atomic<bool>& creating, std::atomic<bool>& done) {
  std::mt19937 rng(seed);
  absl::Time next = absl::Now();
  absl::Cleanup set_done = [&done] { done.store(true); };
  for (int n = 0; n < kMaxJobs && creating.load() && gate.Pass();) {
    if (absl::Now() < next) {
      absl::SleepFor(absl::Milliseconds(20));  // back to the gate soon
      continue;
    }
    next = absl::Now() + absl::Milliseconds(std::uniform_int_distribution<int>(400, 1200)(rng));
    std::string file_id;
    {
      absl::MutexLock lock(&ack.mu);
      auto it = ack.files.begin();
      std::advance(it, std::uniform_int_distribution<size_t>(0, ack.files.size() - 1)(rng));
      file_id = it->first;
    }
    v1::CreateJobRequest r = DemoJob(file_id, 1);
    r.set_idempotency_key(absl::StrCat("fault-job-", n++));
    while (true) {
      auto job = client.CreateJob(r);
      if (job.ok()) {
        absl::MutexLock lock(&ack.mu);
        ack.jobs.push_back(job->id());
        break;
      }
      ASSERT_TRUE(ServerDown(job.status())) << job.status();
      {
        absl::MutexLock lock(&ack.mu);
        ++ack.create_retries;
      }
      if (!gate.Pass()) return;
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
}

// Creates jobs as fast as lathed answers, each cancelled as soon as it is
// acknowledged (so the workers are not swamped), retrying a refused create
// with the same idempotency key: the kills land mid-create often.
void FloodLoop(Client& client, Gate& gate, Acknowledged& ack,
               const std::string& file_id) {
  for (int n = 0; gate.Pass(); ++n) {
    v1::CreateJobRequest r = DemoJob(file_id, 1);
    r.set_idempotency_key(absl::StrCat("flood-", n));
    while (true) {
      auto job = client.CreateJob(r);
      if (job.ok()) {
        auto cancelled = client.CancelJob(job->id());
        EXPECT_TRUE(cancelled.ok() || ServerDown(cancelled.status()) ||
                    absl::IsFailedPrecondition(cancelled.status()))
            << cancelled.status();
        absl::MutexLock lock(&ack.mu);
        ++ack.flood_jobs;
        break;
      }
      ASSERT_TRUE(ServerDown(job.status())) << job.status();
      if (!gate.Pass()) return;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
}

// Jobs of the project in `status` (paging through them all).
std::vector<std::string> JobsIn(Client& c, v1::JobStatus status) {
  std::vector<std::string> out;
  v1::ListJobsRequest r;
  r.set_limit(100);
  r.set_status(status);
  while (true) {
    auto page = c.ListJobs(r);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) break;
    for (const v1::Job& j : page->data()) out.push_back(j.id());
    if (!page->has_more() || page->data().empty()) break;
    r.set_after(page->data().rbegin()->id());
  }
  return out;
}

// Reads the events and checkpoints of random jobs: what it sees is stored.
void WatchLoop(Client& client, Gate& gate, Acknowledged& ack, uint32_t seed) {
  std::mt19937 rng(seed);
  while (gate.Pass()) {
    absl::SleepFor(absl::Milliseconds(100));
    std::string job_id;
    {
      absl::MutexLock lock(&ack.mu);
      if (ack.jobs.empty()) continue;
      job_id = ack.jobs[std::uniform_int_distribution<size_t>(0, ack.jobs.size() - 1)(rng)];
    }
    std::vector<v1::JobEvent> events = AllEvents(client, job_id);
    auto checkpoints = client.ListJobCheckpoints(job_id);
    absl::MutexLock lock(&ack.mu);
    for (const v1::JobEvent& e : events) ack.events[job_id][e.id()] = e.message();
    if (checkpoints.ok()) {
      for (const v1::Checkpoint& cp : checkpoints->data()) {
        ack.checkpoints[job_id][cp.step_number()] = FilesOf(cp);
      }
    }
  }
}

// Checks through the API that every acknowledged record is there, as it
// was. Returns how many records were checked.
int64_t ExpectAcknowledgedStored(Client& c, Acknowledged& ack, int kill) {
  absl::MutexLock lock(&ack.mu);
  int64_t checked = 0;
  std::map<std::string, std::string> stored_files;
  v1::ListFilesRequest lf;
  lf.set_limit(100);
  while (true) {
    auto page = c.ListFiles(lf);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) break;
    for (const v1::File& f : page->data()) stored_files[f.id()] = f.sha256();
    if (!page->has_more() || page->data().empty()) break;
    lf.set_after(page->data().rbegin()->id());
  }
  for (const auto& [id, sha] : ack.files) {
    EXPECT_EQ(stored_files[id], sha) << "file " << id << " lost after kill " << kill;
    ++checked;
  }
  for (const std::string& id : ack.jobs) {
    auto job = c.GetJob(id);
    EXPECT_TRUE(job.ok()) << "job " << id << " lost after kill " << kill << ": " << job.status();
    ++checked;
  }
  for (const auto& [job_id, seen] : ack.events) {
    std::map<std::string, std::string> stored;
    for (const v1::JobEvent& e : AllEvents(c, job_id)) stored[e.id()] = e.message();
    for (const auto& [id, message] : seen) {
      EXPECT_EQ(stored[id], message) << job_id << " event " << id << " lost after kill " << kill;
      ++checked;
    }
  }
  for (const auto& [job_id, seen] : ack.checkpoints) {
    auto stored = c.ListJobCheckpoints(job_id);
    EXPECT_TRUE(stored.ok()) << stored.status();
    if (!stored.ok()) continue;
    std::map<int64_t, std::string> now;
    for (const v1::Checkpoint& cp : stored->data()) now[cp.step_number()] = FilesOf(cp);
    for (const auto& [step, files] : seen) {
      EXPECT_EQ(now[step], files) << job_id << " checkpoint " << step << " lost after kill " << kill;
      ++checked;
    }
  }
  return checked;
}

TEST(LathedFaultTest, KilledRepeatedlyLosesNoAcknowledgedWriteAndLeavesNoStrayBlob) {
  const std::string kSuite = "lathed-sigkill";
  uint32_t seed = FaultSeed(kSuite, 42);
  std::mt19937 rng(seed);
  // A lease well above a restart plus a reconnect on a loaded machine: lease
  // expiry is the worker suites' subject, not this one's.
  auto cluster = Cluster::Start(TestRoot("fault-lathed"), kWorkers,
                                {"--checkpoint_every_steps=3", "--lease_seconds=10",
                                 "--max_attempts=20"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const std::string data = c.root() + "/data";
  Acknowledged ack;
  {
    auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
    ASSERT_TRUE(file.ok()) << file.status();
    absl::MutexLock lock(&ack.mu);
    ack.files[file->id()] = file->sha256();
  }
  // Each thread has its own client: c.client() is replaced at each restart.
  std::unique_ptr<Client> uploader = QuicklyReconnectingClient(c);
  std::unique_ptr<Client> creator = QuicklyReconnectingClient(c);
  std::unique_ptr<Client> watcher = QuicklyReconnectingClient(c);
  std::unique_ptr<Client> flooder = QuicklyReconnectingClient(c);
  Gate gate(4);
  std::vector<std::thread> threads;
  // A thread whose loop ends (done, or a failed assertion) still parks at
  // the gate, so Pause() never waits for it in vain.
  auto run = [&](std::function<void()> loop) {
    threads.emplace_back([&gate, loop] {
      loop();
      while (gate.Pass()) absl::SleepFor(absl::Milliseconds(50));
    });
  };
  run([&] { UploadLoop(*uploader, gate, ack, c.demo_dir(), c.root() + "/uploads", seed + 3); });
  std::atomic<bool> creating{true}, created{false};
  run([&] { CreateLoop(*creator, gate, ack, seed + 1, creating, created); });
  run([&] { WatchLoop(*watcher, gate, ack, seed + 2); });
  std::string flood_file;
  {
    absl::MutexLock lock(&ack.mu);
    flood_file = ack.files.begin()->first;
  }
  run([&] { FloodLoop(*flooder, gate, ack, flood_file); });
  absl::Cleanup join = [&] {  // also when an assertion ends the test early
    gate.Stop();
    for (std::thread& t : threads) {
      if (t.joinable()) t.join();
    }
  };

  absl::flat_hash_set<std::string> hashed;
  int kills = 0, integrity_ok = 0;
  int64_t strays_left = 0, tmp_left = 0, checks = 0, strays_after = 0,
          tmp_after = 0;
  int64_t stranded = 0;  // jobs in validating_files after a restart
  // Kills lathed, checks what the crash left, restarts it and checks what
  // its start-up made of it, with clients and workers held still.
  auto kill_and_check = [&](bool last) {
    c.lathed().Signal(SIGKILL);
    c.lathed().Wait(absl::Seconds(10));
    ++kills;
    if (!last) gate.Pause();
    DataDirState crashed = InspectDataDir(
        SnapshotDatabase(data, c.root() + "/snapshot"), data, &hashed);
    EXPECT_TRUE(crashed.integrity_ok) << "after kill " << kills;
    integrity_ok += crashed.integrity_ok ? 1 : 0;
    EXPECT_TRUE(crashed.bad_blobs.empty())
        << "kill " << kills << ": " << absl::StrJoin(crashed.bad_blobs, " ");
    strays_left += static_cast<int64_t>(crashed.stray.size());
    tmp_left += static_cast<int64_t>(crashed.tmp.size());
    // The workers tried to reach the dead lathed meanwhile; now they are
    // held still so that what the restart left can be seen alone.
    for (int i = 0; i < kWorkers; ++i) c.worker(i).Signal(SIGSTOP);
    absl::Status restarted = c.RestartLathed();
    EXPECT_TRUE(restarted.ok()) << restarted << "\n" << c.Logs();
    if (restarted.ok()) {
      DataDirState after = InspectDataDir(data + "/lathe.db", data, &hashed);
      EXPECT_TRUE(after.integrity_ok);
      EXPECT_TRUE(after.bad_blobs.empty()) << absl::StrJoin(after.bad_blobs, " ");
      EXPECT_TRUE(after.stray.empty())
          << "kill " << kills << ": stray blobs " << absl::StrJoin(after.stray, " ");
      EXPECT_TRUE(after.tmp.empty()) << "kill " << kills << ": " << absl::StrJoin(after.tmp, " ");
      strays_after += static_cast<int64_t>(after.stray.size());
      tmp_after += static_cast<int64_t>(after.tmp.size());
      checks += ExpectAcknowledgedStored(c.client(), ack, kills);
      // Nothing advances a job left in validating_files: none may be.
      std::vector<std::string> stuck =
          JobsIn(c.client(), v1::JOB_STATUS_VALIDATING_FILES);
      EXPECT_TRUE(stuck.empty())
          << "kill " << kills
          << ": stranded in validating_files: " << absl::StrJoin(stuck, " ");
      stranded += static_cast<int64_t>(stuck.size());
    }
    for (int i = 0; i < kWorkers; ++i) c.worker(i).Signal(SIGCONT);
    if (!last) gate.Resume();
    return restarted.ok();
  };

  for (int k = 0; k < kKills; ++k) {
    // Kill at a random moment: mid-upload, mid-create, mid-report, mid-fsync.
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(300, 1200)(rng)));
    if (!kill_and_check(false)) break;
  }
  int finished_during_kills = 0;
  {
    absl::MutexLock lock(&ack.mu);
    for (const std::string& id : ack.jobs) {
      auto job = c.client().GetJob(id);
      finished_during_kills += job.ok() && IsTerminal(job->status()) ? 1 : 0;
    }
  }
  absl::Time kills_over = absl::Now();
  // No more jobs; the uploads and the reading of events and checkpoints go
  // on while the workers reconnect by themselves and every job finishes.
  creating.store(false);
  for (absl::Time until = absl::Now() + absl::Minutes(1); !created.load() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(created.load());
  std::vector<std::string> jobs;
  {
    absl::MutexLock lock(&ack.mu);
    jobs = ack.jobs;
  }
  int succeeded = 0;
  for (const std::string& id : jobs) {
    auto job = WaitForJob(c.client(), id, [](const v1::Job& j) { return IsTerminal(j.status()); },
                          absl::Minutes(3));
    ASSERT_TRUE(job.ok()) << job.status() << "\n" << c.Logs();
    EXPECT_EQ(job->status(), v1::JOB_STATUS_SUCCEEDED) << id << ": " << job->error().message();
    succeeded += job->status() == v1::JOB_STATUS_SUCCEEDED ? 1 : 0;
  }
  EXPECT_GE(jobs.size(), 10u);
  absl::Time all_done = absl::Now();
  std::move(join).Invoke();
  // One last kill once all is done, and a last look.
  kill_and_check(true);

  absl::MutexLock lock(&ack.mu);
  int64_t events = 0, checkpoints = 0;
  for (const auto& [job, seen] : ack.events) events += static_cast<int64_t>(seen.size());
  for (const auto& [job, seen] : ack.checkpoints) checkpoints += static_cast<int64_t>(seen.size());
  Figure(kSuite, "lathed kills (SIGKILL, random moment)", absl::StrCat(kills));
  Figure(kSuite, "acknowledged records",
         absl::StrCat(ack.files.size(), " files, ", ack.jobs.size(), " jobs, ", events,
                      " events, ", checkpoints, " checkpoints seen"));
  Figure(kSuite, "acknowledged writes lost",
         absl::StrCat(::testing::Test::HasFailure() ? "SEE FAILURES" : "0", " (",
                      checks, " record checks after restarts)"));
  Figure(kSuite, "integrity_check ok", absl::StrCat(integrity_ok, "/", kills));
  Figure(kSuite, "blobs checked against their SHA-256", absl::StrCat(hashed.size()));
  Figure(kSuite, "stray blobs / tmp files left by the crashes",
         absl::StrCat(strays_left, " / ", tmp_left, ", all removed at restart"));
  Figure(kSuite, "stray blobs / tmp files after restarts",
         absl::StrCat(strays_after, " / ", tmp_after));
  Figure(kSuite, "jobs succeeded",
         absl::StrCat(succeeded, "/", jobs.size(), " (", finished_during_kills,
                      " finished while the kills went on; the last ",
                      absl::FormatDuration(absl::Trunc(all_done - kills_over, absl::Seconds(1))),
                      " after them)"));
  Figure(kSuite, "jobs created by the flood (each cancelled at once)",
         absl::StrCat(ack.flood_jobs, "; ", stranded,
                      " left in validating_files by a kill"));
  Figure(
      kSuite, "client calls refused while lathed was down",
      absl::StrCat(ack.upload_errors, " uploads, ", ack.create_retries,
                   " job creations (retried with the same idempotency key)"));
}

}  // namespace
}  // namespace lathe::testing
