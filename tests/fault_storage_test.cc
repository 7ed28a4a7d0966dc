// Storage failing under lathed, with real processes: once a job's first
// checkpoint is stored, lathed's file size limit (RLIMIT_FSIZE, lowered from
// outside with prlimit) drops below the size of a checkpoint's files but
// stays above the database's, so blob writes fail with EFBIG (lathed ignores
// SIGXFSZ) as they would on a full disk. A failed write must be an error
// and a job event, never a stored file: the previous checkpoint stays whole
// and is what a new attempt resumes from, the adapter is not recorded until
// it is stored whole, and once space returns the job finishes.
#include <signal.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_state.h"
#include "tests/cluster.h"
#include "tests/fault_util.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

// Above lathe.db, its WAL (checkpointed at ~4 MiB) and lathed's log; below
// the ~9 MiB adapter and ~18 MiB optimizer state of a rank-1024 LoRA.
constexpr rlim_t kLimit = 6 << 20;

// Waits for an event whose message contains every one of `parts`.
absl::StatusOr<v1::JobEvent> WaitForEvent(Client& c, const std::string& job_id,
                                          const std::vector<std::string>& parts,
                                          absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    for (const v1::JobEvent& e : AllEvents(c, job_id)) {
      bool all = true;
      for (const std::string& p : parts) all = all && absl::StrContains(e.message(), p);
      if (all) return e;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("no event with ", parts.front()));
}

int64_t SizeOf(const std::string& path) {
  std::error_code ec;
  auto n = fs::file_size(path, ec);
  return ec ? 0 : static_cast<int64_t>(n);
}

TEST(StorageFaultTest, FailedWritesKeepThePreviousCheckpointAndAreRetried) {
  const std::string kSuite = "storage-full";
  auto cluster = Cluster::Start(TestRoot("fault-storage"), 1, {"--checkpoint_every_steps=5"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const std::string data = c.root() + "/data";
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  v1::CreateJobRequest r = DemoJob(file->id(), 1);  // 20 steps
  r.mutable_lora()->set_rank(1024);
  for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"}) {
    r.mutable_lora()->add_target_modules(m);
  }
  auto job = c.client().CreateJob(r);
  ASSERT_TRUE(job.ok()) << job.status();
  auto first = WaitForJob(c.client(), job->id(), [&](const v1::Job&) {
    auto cps = c.client().ListJobCheckpoints(job->id());
    return cps.ok() && cps->data_size() > 0;
  }, absl::Minutes(2));
  ASSERT_TRUE(first.ok()) << first.status() << "\n" << c.Logs();

  // The disk fills up.
  for (const char* name : {"/lathe.db", "/lathe.db-wal"}) {
    ASSERT_LT(SizeOf(data + name), static_cast<int64_t>(kLimit) - (1 << 20)) << name;
  }
  ASSERT_LT(SizeOf(c.root() + "/lathed.log"), static_cast<int64_t>(kLimit) / 2);
  pid_t lathed = c.lathed().pid();
  struct rlimit normal;
  ASSERT_EQ(prlimit(lathed, RLIMIT_FSIZE, nullptr, &normal), 0);
  struct rlimit full = normal;
  full.rlim_cur = kLimit;
  ASSERT_EQ(prlimit(lathed, RLIMIT_FSIZE, &full, nullptr), 0) << std::strerror(errno);

  // The next checkpoint cannot be stored: the worker hears it as an error,
  // says so in an event, and keeps training from the checkpoint it has.
  auto failed = WaitForEvent(c.client(), job->id(),
                             {"Uploading checkpoint ", "RESOURCE_EXHAUSTED"}, absl::Minutes(1));
  ASSERT_TRUE(failed.ok()) << failed.status() << "\n" << c.Logs();
  int64_t failed_step = NumberAfter(failed->message(), "Uploading checkpoint ");
  ASSERT_GT(failed_step, 0) << failed->message();
  auto gave_up = WaitForEvent(
      c.client(), job->id(),
      {absl::StrCat("Checkpoint at step ", failed_step, " was not stored")}, absl::Minutes(1));
  ASSERT_TRUE(gave_up.ok()) << gave_up.status() << "\n" << c.Logs();
  EXPECT_EQ(gave_up->level(), "warn");

  // Nothing partial is referenced, nothing is left in tmp/, and the
  // previous checkpoint is whole: it downloads and matches its hashes.
  auto checkpoints = c.client().ListJobCheckpoints(job->id());
  ASSERT_TRUE(checkpoints.ok());
  ASSERT_GT(checkpoints->data_size(), 0);
  int64_t valid = checkpoints->data().rbegin()->step_number();
  EXPECT_LT(valid, failed_step);
  for (const v1::Checkpoint& cp : checkpoints->data()) {
    EXPECT_NE(cp.step_number(), failed_step);
  }
  absl::flat_hash_set<std::string> hashed;
  DataDirState full_disk;
  for (absl::Time until = absl::Now() + absl::Seconds(10); absl::Now() < until;) {
    full_disk = InspectDataDir(data + "/lathe.db", data, &hashed);
    if (full_disk.tmp.empty()) break;  // an upload being refused right now
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(full_disk.integrity_ok);
  EXPECT_TRUE(full_disk.bad_blobs.empty());
  EXPECT_TRUE(full_disk.tmp.empty());
  EXPECT_TRUE(full_disk.stray.empty());
  auto downloaded = c.client().DownloadCheckpoint(job->id(), valid, c.root() + "/valid", nullptr);
  EXPECT_TRUE(downloaded.ok()) << downloaded.status();

  // The worker dies while nothing can be stored: the next attempt resumes
  // from that previous checkpoint.
  c.worker(0).Signal(SIGKILL);
  c.worker(0).Wait(absl::Seconds(10));
  c.AddWorker();
  auto resumed = WaitForEvent(c.client(), job->id(),
                              {absl::StrCat("Resuming from the checkpoint at step ", valid, " ")},
                              absl::Minutes(1));
  ASSERT_TRUE(resumed.ok()) << resumed.status() << "\n" << c.Logs();

  // Its adapter cannot be stored either: the job does not succeed on a
  // partial adapter; the worker retries.
  auto adapter_failed = WaitForEvent(
      c.client(), job->id(), {"Uploading adapter_model.safetensors failed", "RESOURCE_EXHAUSTED"},
      absl::Minutes(2));
  ASSERT_TRUE(adapter_failed.ok()) << adapter_failed.status() << "\n" << c.Logs();
  absl::SleepFor(absl::Seconds(1));
  auto waiting = c.client().GetJob(job->id());
  ASSERT_TRUE(waiting.ok());
  EXPECT_EQ(waiting->status(), v1::JOB_STATUS_RUNNING);
  EXPECT_TRUE(waiting->fine_tuned_model().empty());
  for (const v1::ResultFile& f : waiting->result_files()) {
    EXPECT_NE(f.name(), "adapter_model.safetensors");
  }
  int failed_uploads = 0;
  for (const v1::JobEvent& e : AllEvents(c.client(), job->id())) {
    failed_uploads += absl::StrContains(e.message(), "RESOURCE_EXHAUSTED") ? 1 : 0;
  }

  // Space returns: the retry stores the adapter and the job succeeds.
  absl::Time freed = absl::Now();
  ASSERT_EQ(prlimit(lathed, RLIMIT_FSIZE, &normal, nullptr), 0);
  auto done = WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
    return IsTerminal(j.status());
  }, absl::Minutes(2));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << c.Logs();
  EXPECT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  absl::Duration recovered = absl::Now() - freed;
  auto adapter = c.client().DownloadAdapter(job->id(), c.root() + "/adapter", nullptr);
  EXPECT_TRUE(adapter.ok()) << adapter.status();

  // And after a restart, nothing stray is left behind.
  ASSERT_TRUE(c.RestartLathed().ok()) << c.Logs();
  DataDirState end = InspectDataDir(data + "/lathe.db", data, &hashed);
  EXPECT_TRUE(end.integrity_ok);
  EXPECT_TRUE(end.bad_blobs.empty());
  EXPECT_TRUE(end.stray.empty());
  EXPECT_TRUE(end.tmp.empty());

  Figure(kSuite, "blob writes failing (RLIMIT_FSIZE)",
         absl::StrCat(kLimit >> 20, " MiB limit; ", failed_uploads,
                      " failed uploads reported as job events"));
  Figure(kSuite, "previous checkpoint",
         absl::StrCat("step ", valid, " stayed whole; the next attempt resumed from it"));
  Figure(kSuite, "partial files stored / referenced / left in tmp",
         absl::StrCat(full_disk.stray.size() + end.stray.size(), " / 0 / ",
                      full_disk.tmp.size() + end.tmp.size()));
  Figure(kSuite, "job after space returned",
         absl::StrCat(StatusName(done->status()), " ",
                      absl::FormatDuration(absl::Trunc(recovered, absl::Milliseconds(100))),
                      " later (the adapter upload was retried)"));
}

}  // namespace
}  // namespace lathe::testing
