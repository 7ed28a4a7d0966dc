// Crash safety with real processes: lathed killed with SIGKILL while a job
// trains and files upload; after each restart every acknowledged record is
// there, the database passes integrity_check, every blob matches its hash,
// and the workers reconnect by themselves and finish the job.
#include <signal.h>

#include <filesystem>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/job_state.h"
#include "common/sha256.h"
#include "server/store/database.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

// Checks the data directory as a fresh lathed would find it: the SQLite
// file is intact and every blob a record names exists with that SHA-256.
void ExpectDataIntact(const std::string& data_dir) {
  auto db = store::Database::Open(data_dir + "/lathe.db");
  ASSERT_TRUE(db.ok()) << db.status();
  auto check = (*db)->Prepare("PRAGMA integrity_check");
  ASSERT_TRUE(check.ok());
  ASSERT_TRUE(*check->Step());
  EXPECT_EQ(check->ColumnText(0), "ok");
  auto blobs = (*db)->Prepare(
      "SELECT sha256 FROM files UNION SELECT sha256 FROM result_files "
      "UNION SELECT f.sha256 FROM checkpoint_files f JOIN checkpoints c "
      "ON c.job_id = f.job_id AND c.step = f.step");
  ASSERT_TRUE(blobs.ok());
  int n = 0;
  while (*blobs->Step()) {
    std::string sha = blobs->ColumnText(0);
    std::string path = data_dir + "/blobs/" + sha.substr(0, 2) + "/" + sha;
    auto actual = Sha256File(path);
    ASSERT_TRUE(actual.ok()) << "missing blob " << path;
    EXPECT_EQ(*actual, sha);
    ++n;
  }
  EXPECT_GT(n, 0);
}

TEST(FaultTest, LathedKilledRepeatedlyLosesNothingAcknowledged) {
  auto cluster = Cluster::Start(TestRoot("fault-lathed"), 1,
                                {"--checkpoint_every_steps=5"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok());
  v1::CreateJobRequest req;
  req.set_model("lathe-demo");
  req.set_training_file(file->id());
  req.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(15);
  auto job = c.client().CreateJob(req);
  ASSERT_TRUE(job.ok());

  std::mt19937 rng(7);
  std::set<std::string> acknowledged_files = {file->id()};
  size_t events_seen = 0;
  for (int kill = 0; kill < 3; ++kill) {
    // Upload a few more files while training runs, then kill at a random
    // moment, possibly mid-upload or mid-report.
    for (int i = 0; i < 3; ++i) {
      auto f = c.client().UploadFile(c.demo_dir() + "/valid.jsonl", "fine-tune", nullptr);
      if (f.ok()) acknowledged_files.insert(f->id());
    }
    auto before = c.client().ListJobEvents([&] {
      v1::ListJobEventsRequest r;
      r.set_job_id(job->id());
      r.set_limit(1000);
      return r;
    }());
    if (before.ok()) events_seen = std::max<size_t>(events_seen, before->data_size());
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(50, 600)(rng)));
    ASSERT_TRUE(c.RestartLathed().ok()) << c.Logs();
    for (const auto& id : acknowledged_files) {
      EXPECT_TRUE(c.client().GetFile(id).ok()) << id << " lost after restart " << kill;
    }
    v1::ListJobEventsRequest r;
    r.set_job_id(job->id());
    r.set_limit(1000);
    auto after = c.client().ListJobEvents(r);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_GE(static_cast<size_t>(after->data_size()), std::min<size_t>(events_seen, 1000));
  }
  // The worker reconnects by itself and the job finishes.
  absl::Time deadline = absl::Now() + absl::Minutes(3);
  absl::StatusOr<v1::Job> end;
  do {
    absl::SleepFor(absl::Milliseconds(100));
    end = c.client().GetJob(job->id());
  } while (absl::Now() < deadline && (!end.ok() || !IsTerminal(end->status())));
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  EXPECT_TRUE(fs::is_empty(c.root() + "/data/tmp"));
  c.lathed().Signal(SIGKILL);
  c.lathed().Wait(absl::Seconds(5));
  ExpectDataIntact(c.root() + "/data");
}

}  // namespace
}  // namespace lathe::testing
