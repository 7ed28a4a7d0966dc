// Multi-worker jobs with real processes on loopback: lathed gang-places a
// job that asks for devices 2 on two lathe-worker processes, which train it
// data-parallel over torch.distributed (a c10d TCPStore hosted by rank 0,
// ProcessGroupGloo). The adapter must equal one worker's at the same
// (whole) batch; a rank killed mid-job must fail the gang's attempt on both
// ranks and the job must resume from its checkpoint on a new gang; two
// gangs that each fit only alone must both finish.
#include <signal.h>

#include <cmath>
#include <cstring>
#include <map>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_state.h"
#include "common/safetensors.h"
#include "tests/cluster.h"
#include "tests/job_history.h"

namespace lathe::testing {
namespace {

// The demo job with `devices` workers: `epochs` over 80 examples at a whole
// batch of 8 (10 steps each), a checkpoint every 5, no dropout (so that the
// runs compare exactly).
v1::CreateJobRequest GangJob(const std::string& file_id, int devices, int epochs = 3) {
  v1::CreateJobRequest r = DemoJob(file_id, epochs);
  auto* hp = r.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_batch_size(8);
  hp->set_checkpoint_every_steps(5);
  r.mutable_lora()->set_dropout(0);
  r.set_devices(devices);
  return r;
}

// Every float32 tensor of a safetensors file, by name.
std::map<std::string, std::vector<float>> ReadTensors(const std::string& path) {
  std::map<std::string, std::vector<float>> out;
  absl::StatusOr<std::unique_ptr<safetensors::MappedFile>> f =
      safetensors::MappedFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return out;
  for (const safetensors::TensorInfo& t : (*f)->header().tensors) {
    EXPECT_EQ(t.dtype, safetensors::Dtype::kF32) << t.name;
    absl::Span<const std::byte> bytes = (*f)->Data(t);
    std::vector<float> values(bytes.size() / sizeof(float));
    std::memcpy(values.data(), bytes.data(), bytes.size());
    out[t.name] = std::move(values);
  }
  return out;
}

// The largest difference between two adapters' tensors (infinity when
// their names or sizes differ).
double MaxDifference(const std::string& a, const std::string& b) {
  const auto x = ReadTensors(a), y = ReadTensors(b);
  if (x.size() != y.size() || x.empty()) return INFINITY;
  double max = 0;
  for (const auto& [name, values] : x) {
    auto it = y.find(name);
    if (it == y.end() || it->second.size() != values.size()) return INFINITY;
    for (size_t i = 0; i < values.size(); ++i) {
      max = std::max(max, static_cast<double>(std::fabs(values[i] - it->second[i])));
    }
  }
  return max;
}

// Each metrics event's (step, loss), in order.
std::vector<std::pair<int64_t, double>> Losses(const std::vector<v1::JobEvent>& events) {
  std::vector<std::pair<int64_t, double>> out;
  for (const v1::JobEvent& e : events) {
    if (e.type() == "metrics") out.emplace_back(e.metrics().step(), e.metrics().train_loss());
  }
  return out;
}

// A job's events, one per line, for failure messages.
std::string History(Client& c, const std::string& job_id) {
  std::string out;
  for (const v1::JobEvent& e : AllEvents(c, job_id)) {
    if (e.type() != "metrics") absl::StrAppend(&out, e.level(), ": ", e.message(), "\n");
  }
  return out;
}

absl::StatusOr<v1::Job> WaitFinished(Client& c, const std::string& id,
                                     absl::Duration timeout = absl::Minutes(4)) {
  return WaitForJob(c, id, [](const v1::Job& j) { return IsTerminal(j.status()); }, timeout);
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string AdapterOf(Client& c, const std::string& job_id, const std::string& dir) {
  auto files = c.DownloadAdapter(job_id, dir, nullptr);
  EXPECT_TRUE(files.ok()) << files.status();
  return dir + "/adapter_model.safetensors";
}

TEST(MultiWorkerTest, TwoWorkerGlooJobEqualsOneWorkerAtTheWholeBatch) {
  auto cluster = Cluster::Start(TestRoot("multi-worker-equal"), 2);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();

  auto gang = c.client().CreateJob(GangJob(file->id(), 2));
  ASSERT_TRUE(gang.ok()) << gang.status();
  EXPECT_EQ(gang->devices(), 2);
  auto gang_done = WaitFinished(c.client(), gang->id());
  ASSERT_TRUE(gang_done.ok()) << gang_done.status() << c.Logs();
  ASSERT_EQ(gang_done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();

  auto solo = c.client().CreateJob(GangJob(file->id(), 1));
  ASSERT_TRUE(solo.ok()) << solo.status();
  auto solo_done = WaitFinished(c.client(), solo->id());
  ASSERT_TRUE(solo_done.ok() && solo_done->status() == v1::JOB_STATUS_SUCCEEDED)
      << c.Logs();

  // One metrics event per step (rank 0's), each loss the whole batch's:
  // equal to one worker's at that batch.
  const auto gang_events = AllEvents(c.client(), gang->id());
  const auto gang_losses = Losses(gang_events);
  const auto solo_losses = Losses(AllEvents(c.client(), solo->id()));
  ASSERT_EQ(gang_losses.size(), 30u);
  ASSERT_EQ(solo_losses.size(), 30u);
  for (size_t i = 0; i < gang_losses.size(); ++i) {
    EXPECT_EQ(gang_losses[i].first, static_cast<int64_t>(i) + 1);
    EXPECT_NEAR(gang_losses[i].second, solo_losses[i].second, 1e-4) << "step " << i + 1;
  }
  bool said_data_parallel = false;
  for (const v1::JobEvent& e : gang_events) {
    said_data_parallel |= absl::StrContains(e.message(), "data-parallel over 2 workers (gloo)");
  }
  EXPECT_TRUE(said_data_parallel);
  EXPECT_EQ(gang_done->trained_tokens(), solo_done->trained_tokens());

  const double diff = MaxDifference(AdapterOf(c.client(), gang->id(), c.root() + "/gang"),
                                    AdapterOf(c.client(), solo->id(), c.root() + "/solo"));
  EXPECT_LE(diff, 1e-5) << "the 2-worker adapter differs from 1 worker's by " << diff;
}

TEST(MultiWorkerTest, KillingOneRankFailsTheGangAndTheJobResumesFromItsCheckpoint) {
  auto cluster = Cluster::Start(TestRoot("multi-worker-kill"), 3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  // 100 steps: still training when the kill lands, on any machine (30 left
  // a fast one a few tens of milliseconds).
  constexpr int kEpochs = 10;
  auto job = c.client().CreateJob(GangJob(file->id(), 2, kEpochs));
  ASSERT_TRUE(job.ok()) << job.status();
  // Past the second checkpoint (step 10), rank 1's worker is killed.
  auto running = WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
    return j.progress().steps_done() >= 12 || IsTerminal(j.status());
  });
  ASSERT_TRUE(running.ok() && running->status() == v1::JOB_STATUS_RUNNING)
      << running.status() << c.Logs();
  std::string rank1;
  for (const v1::JobEvent& e : AllEvents(c.client(), job->id())) {
    // "Job started on 2 workers: worker-0 (rank 0), worker-2 (rank 1) …"
    if (size_t at = e.message().find(" (rank 1)"); at != std::string::npos) {
      const size_t begin = e.message().rfind(' ', at - 1) + 1;
      rank1 = e.message().substr(begin, at - begin);
    }
  }
  ASSERT_TRUE(absl::StartsWith(rank1, "worker-")) << rank1;
  const int victim = std::stoi(rank1.substr(7));
  c.worker(victim).Signal(SIGKILL);
  c.worker(victim).Wait(absl::Seconds(10));

  // The gang's attempt fails on rank 0 too (its collective loses its peer)
  // and the job is queued again, then runs on the two workers left.
  auto done = WaitFinished(c.client(), job->id());
  ASSERT_TRUE(done.ok()) << done.status() << c.Logs();
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED)
      << done->error().message() << "\n" << History(c.client(), job->id()) << c.Logs();
  EXPECT_GE(done->attempt(), 2);
  const auto events = AllEvents(c.client(), job->id());
  int64_t resumed_from = 0;
  for (const v1::JobEvent& e : events) {
    if (absl::StartsWith(e.message(), "Resuming from the checkpoint at step ")) {
      resumed_from = NumberAfter(e.message(), "Resuming from the checkpoint at step ");
    }
  }
  EXPECT_GE(resumed_from, 10) << "the new gang did not resume from the checkpoint";
  // Every step from the checkpoint on was trained again, to the last.
  const auto losses = Losses(events);
  ASSERT_FALSE(losses.empty());
  EXPECT_EQ(losses.back().first, kEpochs * 10);

  // And the result is the uninterrupted run's: one worker at the same batch.
  auto solo = c.client().CreateJob(GangJob(file->id(), 1, kEpochs));
  ASSERT_TRUE(solo.ok()) << solo.status();
  auto solo_done = WaitFinished(c.client(), solo->id());
  ASSERT_TRUE(solo_done.ok() && solo_done->status() == v1::JOB_STATUS_SUCCEEDED)
      << c.Logs();
  const double diff = MaxDifference(AdapterOf(c.client(), job->id(), c.root() + "/resumed"),
                                    AdapterOf(c.client(), solo->id(), c.root() + "/solo"));
  EXPECT_LE(diff, 1e-5) << "the resumed gang's adapter differs by " << diff;
}

TEST(MultiWorkerTest, TwoGangsThatEachFitOnlyAloneBothFinish) {
  // Three workers, two jobs of two: only one gang fits at a time; neither
  // may hold a partial gang while the other runs.
  auto cluster = Cluster::Start(TestRoot("multi-worker-gangs"), 3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    v1::CreateJobRequest r = GangJob(file->id(), 2);
    r.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(1);
    auto job = c.client().CreateJob(r);
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->id());
  }
  for (const std::string& id : ids) {
    auto done = WaitFinished(c.client(), id);
    ASSERT_TRUE(done.ok()) << done.status() << c.Logs();
    EXPECT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << id << c.Logs();
    EXPECT_EQ(done->attempt(), 1) << id;
  }
}

// Three LoRA jobs of one base on one worker of --max_jobs=3: lathed
// packs them onto it (the base counted once), the worker trains them at
// once in one process over one copy of the base, and each one's losses and
// adapter equal the same job run alone.
TEST(SharedBaseWorkerTest, ThreeLoraJobsShareOneWorkersBaseAndEachEqualsItsSoloRun) {
  auto cluster = Cluster::Start(TestRoot("shared-base-worker"), 0);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  c.AddWorker({"--max_jobs=3"});
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  // Other seeds (initialization, data order), ranks and dropout; 200 steps.
  auto job_of = [&](int i) {
    v1::CreateJobRequest r = DemoJob(file->id(), 10);
    r.set_seed(100 + i);
    r.mutable_lora()->set_rank(4 << i);
    r.mutable_lora()->set_dropout(i == 2 ? 0.1 : 0.0);
    return r;
  };
  std::vector<std::string> together;
  for (int i = 0; i < 3; ++i) {
    auto job = c.client().CreateJob(job_of(i));
    ASSERT_TRUE(job.ok()) << job.status();
    together.push_back(job->id());
  }
  // All three train at the same time on the one worker.
  bool at_once = false;
  for (absl::Time deadline = absl::Now() + absl::Minutes(4); absl::Now() < deadline;) {
    int running = 0, finished = 0;
    for (const std::string& id : together) {
      auto j = c.client().GetJob(id);
      ASSERT_TRUE(j.ok()) << j.status();
      running += j->status() == v1::JOB_STATUS_RUNNING && j->progress().steps_done() > 0;
      finished += IsTerminal(j->status());
    }
    at_once = at_once || running == 3;
    if (finished == 3) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(at_once) << "the three jobs never trained at once" << c.Logs();
  // In the worker, over one copy of the base: read once, shared twice.
  const std::string log = ReadFileOrEmpty(c.root() + "/worker-0.log");
  EXPECT_EQ(Count(log, "holding the base "), 1) << log;
  EXPECT_EQ(Count(log, "sharing the base "), 2) << log;
  for (const std::string& id : together) {
    auto done = WaitFinished(c.client(), id);
    ASSERT_TRUE(done.ok()) << done.status() << c.Logs();
    ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED)
        << done->error().message() << "\n" << c.Logs();
    EXPECT_EQ(done->attempt(), 1);
    EXPECT_GT(done->shared_memory_bytes(), 0);
    EXPECT_FALSE(done->base_sha256().empty());
  }

  // The same jobs one at a time.
  for (int i = 0; i < 3; ++i) {
    auto solo = c.client().CreateJob(job_of(i));
    ASSERT_TRUE(solo.ok()) << solo.status();
    auto solo_done = WaitFinished(c.client(), solo->id());
    ASSERT_TRUE(solo_done.ok() && solo_done->status() == v1::JOB_STATUS_SUCCEEDED)
        << c.Logs();
    const auto shared_losses = Losses(AllEvents(c.client(), together[i]));
    const auto solo_losses = Losses(AllEvents(c.client(), solo->id()));
    ASSERT_EQ(shared_losses.size(), 200u) << i;
    ASSERT_EQ(solo_losses.size(), shared_losses.size()) << i;
    for (size_t s = 0; s < solo_losses.size(); ++s) {
      EXPECT_NEAR(shared_losses[s].second, solo_losses[s].second, 1e-6)
          << "job " << i << " step " << s + 1;
    }
    const double diff = MaxDifference(
        AdapterOf(c.client(), together[i], c.root() + absl::StrCat("/together-", i)),
        AdapterOf(c.client(), solo->id(), c.root() + absl::StrCat("/solo-", i)));
    EXPECT_LE(diff, 1e-6) << "job " << i << "'s adapter differs from its solo run's by "
                          << diff;
  }
}

}  // namespace
}  // namespace lathe::testing
