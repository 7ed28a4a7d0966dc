// Priority preemption with real processes on loopback: a high-priority job
// that finds the only worker busy with a low-priority one preempts it; the
// low one checkpoints, hands back, waits in its place, resumes from its
// checkpoint after the high one, and ends with the weights an uninterrupted
// run has.
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

// The demo job at `priority`: `epochs` over 80 examples at batch 4 (20
// steps an epoch), a checkpoint every 50 steps, no dropout (so that runs
// compare exactly).
v1::CreateJobRequest Job(const std::string& file_id, int epochs, v1::JobPriority priority) {
  v1::CreateJobRequest r = DemoJob(file_id, epochs);
  r.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_checkpoint_every_steps(50);
  r.mutable_lora()->set_dropout(0);
  r.set_priority(priority);
  return r;
}

double MaxDifference(const std::string& a, const std::string& b) {
  auto x = safetensors::MappedFile::Open(a), y = safetensors::MappedFile::Open(b);
  EXPECT_TRUE(x.ok() && y.ok());
  if (!x.ok() || !y.ok()) return INFINITY;
  const auto& tx = (*x)->header().tensors;
  if (tx.empty() || tx.size() != (*y)->header().tensors.size()) return INFINITY;
  double max = 0;
  for (const safetensors::TensorInfo& t : tx) {
    const safetensors::TensorInfo* u = (*y)->header().Find(t.name);
    if (u == nullptr || t.dtype != safetensors::Dtype::kF32 || u->dtype != t.dtype ||
        u->numel() != t.numel()) {
      return INFINITY;
    }
    std::vector<float> p(t.numel()), q(t.numel());
    std::memcpy(p.data(), (*x)->Data(t).data(), p.size() * sizeof(float));
    std::memcpy(q.data(), (*y)->Data(*u).data(), q.size() * sizeof(float));
    for (size_t i = 0; i < p.size(); ++i) max = std::max(max, double(std::fabs(p[i] - q[i])));
  }
  return max;
}

std::string History(Client& c, const std::string& job_id) {
  std::string out;
  for (const v1::JobEvent& e : AllEvents(c, job_id)) {
    if (e.type() != "metrics") absl::StrAppend(&out, e.level(), ": ", e.message(), "\n");
  }
  return out;
}

absl::StatusOr<v1::Job> WaitFinished(Client& c, const std::string& id) {
  return WaitForJob(c, id, [](const v1::Job& j) { return IsTerminal(j.status()); },
                    absl::Minutes(4));
}

TEST(PriorityPreemptionTest, AHighPriorityJobPreemptsALowOneWhichResumesToTheUninterruptedWeights) {
  auto cluster = Cluster::Start(TestRoot("preemption"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();

  // 800 steps: still running when the preemption lands (a sweep and a
  // heartbeat later) on any machine; 60 once finished first on a fast one.
  constexpr int kLowEpochs = 40;
  auto low = c.client().CreateJob(Job(file->id(), kLowEpochs, v1::JOB_PRIORITY_LOW));
  ASSERT_TRUE(low.ok()) << low.status();
  auto running = WaitForJob(c.client(), low->id(), [](const v1::Job& j) {
    return j.progress().steps_done() >= 8 || IsTerminal(j.status());
  });
  ASSERT_TRUE(running.ok() && running->status() == v1::JOB_STATUS_RUNNING)
      << running.status() << c.Logs();
  auto high = c.client().CreateJob(Job(file->id(), 1, v1::JOB_PRIORITY_HIGH));
  ASSERT_TRUE(high.ok()) << high.status();

  auto high_done = WaitFinished(c.client(), high->id());
  ASSERT_TRUE(high_done.ok()) << high_done.status() << c.Logs();
  ASSERT_EQ(high_done->status(), v1::JOB_STATUS_SUCCEEDED) << History(c.client(), high->id());
  auto low_done = WaitFinished(c.client(), low->id());
  ASSERT_TRUE(low_done.ok()) << low_done.status() << c.Logs();
  ASSERT_EQ(low_done->status(), v1::JOB_STATUS_SUCCEEDED) << History(c.client(), low->id());

  // The low job was stopped for the high one, not failed, and resumed from
  // the checkpoint it wrote on the way out, after the high one had run.
  const std::string low_history = History(c.client(), low->id());
  EXPECT_TRUE(absl::StrContains(low_history, absl::StrCat("Preempted by ", high->id())))
      << low_history;
  EXPECT_TRUE(absl::StrContains(History(c.client(), high->id()),
                                absl::StrCat("preempting ", low->id())));
  EXPECT_EQ(low_done->failed_attempts(), 0);
  EXPECT_EQ(low_done->attempt(), 2) << low_history;
  int64_t resumed_from = 0;
  for (const v1::JobEvent& e : AllEvents(c.client(), low->id())) {
    if (absl::StartsWith(e.message(), "Resuming from the checkpoint at step ")) {
      resumed_from = NumberAfter(e.message(), "Resuming from the checkpoint at step ");
    }
  }
  EXPECT_GE(resumed_from, 8) << low_history;
  EXPECT_LE(high_done->finished_at(), low_done->finished_at());
  EXPECT_EQ(high_done->attempt(), 1);

  // Its weights are those of the same job run without interruption.
  auto solo = c.client().CreateJob(Job(file->id(), kLowEpochs, v1::JOB_PRIORITY_LOW));
  ASSERT_TRUE(solo.ok()) << solo.status();
  auto solo_done = WaitFinished(c.client(), solo->id());
  ASSERT_TRUE(solo_done.ok() && solo_done->status() == v1::JOB_STATUS_SUCCEEDED) << c.Logs();
  ASSERT_TRUE(c.client().DownloadAdapter(low->id(), c.root() + "/low", nullptr).ok());
  ASSERT_TRUE(c.client().DownloadAdapter(solo->id(), c.root() + "/solo", nullptr).ok());
  const double diff = MaxDifference(c.root() + "/low/adapter_model.safetensors",
                                    c.root() + "/solo/adapter_model.safetensors");
  EXPECT_LE(diff, 1e-6) << "the preempted job's adapter differs from an uninterrupted run's by "
                        << diff;
}

}  // namespace
}  // namespace lathe::testing
