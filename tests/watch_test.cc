// WatchJob with real processes: a revoked key ends an open stream at once; a
// stream's life is bounded by --max_stream_seconds and the client
// re-attaches from its last event id; event ids are numbered per job and
// tell a project nothing of other projects' activity; idle watchers hold no
// thread and cost no work while another job runs.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "tests/cluster.h"
#include "tests/job_history.h"

namespace lathe::testing {
namespace {

// lathed's thread count (/proc/<pid>/status).
int Threads(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    int n = 0;
    if (absl::StartsWith(line, "Threads:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)), &n)) {
      return n;
    }
  }
  return -1;
}

// User plus system CPU seconds used by `pid` so far (/proc/<pid>/stat).
double CpuSeconds(pid_t pid) {
  std::string stat = ReadFileOrEmpty("/proc/" + std::to_string(pid) + "/stat");
  // Fields after the command name, which is in parentheses: state is the
  // first, utime the 12th and stime the 13th.
  std::vector<std::string> f =
      absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
  if (f.size() < 13) return -1;
  int64_t utime = 0, stime = 0;
  if (!absl::SimpleAtoi(f[11], &utime) || !absl::SimpleAtoi(f[12], &stime))
    return -1;
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

// An open WatchJob stream, read by nobody unless asked.
struct RawWatch {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader;
};

std::unique_ptr<RawWatch> OpenWatch(v1::FineTuning::Stub& stub,
                                    const std::string& key,
                                    const std::string& job_id) {
  auto w = std::make_unique<RawWatch>();
  w->ctx.AddMetadata("authorization", "Bearer " + key);
  v1::WatchJobRequest r;
  r.set_job_id(job_id);
  w->reader = stub.WatchJob(&w->ctx, r);
  return w;
}

// A job of `c` that is paused (placed or not) and stays so.
std::string PausedJob(Cluster& cluster, Client& c) {
  auto file =
      c.UploadFile(cluster.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return "";
  auto job = c.CreateJob(DemoJob(file->id(), 50));
  EXPECT_TRUE(job.ok()) << job.status();
  if (!job.ok()) return "";
  EXPECT_TRUE(c.PauseJob(job->id()).ok());
  return job->id();
}

// The number after an event id's last '-' (-1 if none).
int64_t Tail(const std::string& event_id) {
  int64_t n = -1;
  if (!absl::SimpleAtoi(event_id.substr(event_id.rfind('-') + 1), &n))
    return -1;
  return n;
}

class WatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = Cluster::Start(TestRoot("watch"), 1);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() { delete cluster_; }
  static Cluster* cluster_;
};

Cluster* WatchTest::cluster_ = nullptr;

TEST_F(WatchTest, RevokingTheKeyEndsAnOpenStreamAtOnce) {
  v1::CreateApiKeyRequest r;
  r.set_project("watcher");
  auto key = cluster_->admin().CreateApiKey(r);
  ASSERT_TRUE(key.ok()) << key.status();
  Client c(cluster_->NewChannel(), key->secret());
  std::string job_id = PausedJob(*cluster_, c);
  ASSERT_FALSE(job_id.empty());

  int received = 0;
  absl::Status ended;
  absl::Time ended_at;
  std::thread watch([&] {
    ended = c.WatchJob(
        job_id, "", [&](const v1::WatchJobResponse&) { ++received; },
        absl::Now() + absl::Seconds(20));
    ended_at = absl::Now();
  });
  absl::SleepFor(absl::Seconds(1));  // the stream is open and idle
  absl::Time revoked_at = absl::Now();
  ASSERT_TRUE(cluster_->admin().RevokeApiKey(key->id()).ok());
  watch.join();
  EXPECT_GT(received, 0);
  EXPECT_TRUE(absl::IsUnauthenticated(ended)) << ended;
  EXPECT_TRUE(absl::StrContains(ended.message(), "revoked")) << ended;
  EXPECT_LT(ended_at - revoked_at, absl::Seconds(2.5));
}

TEST_F(WatchTest, EventIdsAreNumberedPerJobAndRefuseAnotherJobsIds) {
  auto a = cluster_->ClientFor("ids-a");
  auto b = cluster_->ClientFor("ids-b");
  auto fa = a->UploadFile(cluster_->demo_dir() + "/train.jsonl", "fine-tune",
                          nullptr);
  auto fb = b->UploadFile(cluster_->demo_dir() + "/train.jsonl", "fine-tune",
                          nullptr);
  ASSERT_TRUE(fa.ok() && fb.ok());
  // The two projects' events interleave on the server.
  std::vector<std::string> a_jobs, b_jobs;
  for (int i = 0; i < 2; ++i) {
    auto ja = a->CreateJob(DemoJob(fa->id(), 50));
    auto jb = b->CreateJob(DemoJob(fb->id(), 50));
    ASSERT_TRUE(ja.ok() && jb.ok());
    a_jobs.push_back(ja->id());
    b_jobs.push_back(jb->id());
  }
  for (size_t i = 0; i < a_jobs.size(); ++i) {
    ASSERT_TRUE(a->CancelJob(a_jobs[i]).ok());
    ASSERT_TRUE(b->CancelJob(b_jobs[i]).ok());
  }
  for (const auto& id : a_jobs)
    ASSERT_TRUE(WaitForJob(*a, id,
                           [](const v1::Job& j) {
                             return j.status() == v1::JOB_STATUS_CANCELLED;
                           })
                    .ok())
        << cluster_->Logs();
  for (const auto& id : b_jobs)
    ASSERT_TRUE(WaitForJob(*b, id,
                           [](const v1::Job& j) {
                             return j.status() == v1::JOB_STATUS_CANCELLED;
                           })
                    .ok())
        << cluster_->Logs();

  std::set<std::string> seen_by_a;
  for (const auto& id : a_jobs) {
    auto events = AllEvents(*a, id);
    ASSERT_GE(events.size(), 3u);
    // Numbered 1, 2, 3, … within the job: no server-wide count shows through.
    for (size_t n = 0; n < events.size(); ++n) {
      EXPECT_EQ(Tail(events[n].id()), static_cast<int64_t>(n + 1))
          << events[n].id();
      EXPECT_TRUE(seen_by_a.insert(events[n].id()).second) << events[n].id();
    }
    // Watching from the start gives the same ids.
    std::vector<std::string> watched;
    ASSERT_TRUE(a->WatchJob(
                     id, "",
                     [&](const v1::WatchJobResponse& u) {
                       watched.push_back(u.event().id());
                     },
                     absl::Now() + absl::Seconds(10))
                    .ok());
    ASSERT_EQ(watched.size(), events.size());
    for (size_t n = 0; n < events.size(); ++n)
      EXPECT_EQ(watched[n], events[n].id());
  }
  auto b_events = AllEvents(*b, b_jobs[0]);
  ASSERT_FALSE(b_events.empty());
  for (const auto& e : b_events)
    EXPECT_EQ(seen_by_a.count(e.id()), 0u) << e.id();

  // A cursor works within its job; another job's event id (of the same
  // project or another) is refused exactly as a malformed cursor is.
  auto events = AllEvents(*a, a_jobs[0]);
  v1::ListJobEventsRequest r;
  r.set_job_id(a_jobs[0]);
  r.set_after(events[0].id());
  auto page = a->ListJobEvents(r);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->data_size(), static_cast<int>(events.size()) - 1);
  EXPECT_EQ(page->data(0).id(), events[1].id());
  r.set_after("ftevent-bogus");
  absl::Status malformed = a->ListJobEvents(r).status();
  EXPECT_TRUE(absl::IsInvalidArgument(malformed)) << malformed;
  EXPECT_TRUE(absl::StrContains(malformed.message(), "after: ")) << malformed;
  for (const std::string& foreign :
       {AllEvents(*a, a_jobs[1])[1].id(), b_events[1].id()}) {
    r.set_after(foreign);
    absl::Status st = a->ListJobEvents(r).status();
    EXPECT_EQ(st.code(), malformed.code()) << foreign << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "after: ")) << st;
    absl::Status watched = a->WatchJob(
        a_jobs[0], foreign, [](const v1::WatchJobResponse&) {},
        absl::Now() + absl::Seconds(5));
    EXPECT_EQ(watched.code(), malformed.code()) << foreign << ": " << watched;
  }
}

TEST_F(WatchTest, IdleWatchersHoldNoThreadsAndCostNoWorkWhileAnotherJobRuns) {
  constexpr int kWatchers = 100;
  auto owner = cluster_->ClientFor("idle-watchers");
  std::string paused = PausedJob(*cluster_, *owner);
  ASSERT_FALSE(paused.empty());
  auto runner = cluster_->ClientFor("busy");
  // Far longer than the test (it is cancelled at the end): 50 epochs of the
  // demo's 80 lines once finished within the two windows on a fast
  // machine, so the busy job trains on them ten times over (10,000 steps).
  const std::string long_file = cluster_->root() + "/train-x10.jsonl";
  {
    std::ifstream in(cluster_->demo_dir() + "/train.jsonl");
    const std::string lines((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
    std::ofstream out(long_file);
    for (int i = 0; i < 10; ++i) out << lines;
  }
  auto file = runner->UploadFile(long_file, "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  auto busy = runner->CreateJob(DemoJob(file->id(), 50));
  ASSERT_TRUE(busy.ok()) << busy.status();
  ASSERT_TRUE(WaitForJob(*runner, busy->id(),
                         [](const v1::Job& j) {
                           return j.progress().steps_done() >= 3;
                         })
                  .ok())
      << cluster_->Logs();
  pid_t pid = cluster_->lathed().pid();

  // The same window with no watcher, then with kWatchers idle ones.
  auto measure = [&](int* steps) {
    int64_t before = runner->GetJob(busy->id())->progress().steps_done();
    double cpu = CpuSeconds(pid);
    absl::SleepFor(absl::Seconds(2));
    cpu = CpuSeconds(pid) - cpu;
    *steps = static_cast<int>(
        runner->GetJob(busy->id())->progress().steps_done() - before);
    return cpu;
  };
  int threads_alone = Threads(pid);
  int steps_alone = 0;
  double cpu_alone = measure(&steps_alone);

  auto stub = v1::FineTuning::NewStub(cluster_->NewChannel());
  std::string key = cluster_->NewKey("idle-watchers");
  std::vector<std::unique_ptr<RawWatch>> watchers;
  for (int i = 0; i < kWatchers; ++i) {
    watchers.push_back(OpenWatch(*stub, key, paused));
    v1::WatchJobResponse first;
    ASSERT_TRUE(watchers.back()->reader->Read(&first)) << i;  // being served
  }
  absl::SleepFor(absl::Milliseconds(300));
  int threads_watched = Threads(pid);
  int steps_watched = 0;
  double cpu_watched = measure(&steps_watched);
  std::printf(
      "lathed with %d idle watchers: %d threads (%d without); CPU %.3f s "
      "over 2 s while the other job ran %d steps (%.3f s over %d steps "
      "without)\n",
      kWatchers, threads_watched, threads_alone, cpu_watched, steps_watched,
      cpu_alone, steps_alone);
  EXPECT_GT(steps_alone, 0) << cluster_->Logs();
  EXPECT_GT(steps_watched, 0) << cluster_->Logs();
  // A thread per stream would add kWatchers.
  EXPECT_LT(threads_watched - threads_alone, 10);
  // Every event waking every watcher costs far more than this.
  EXPECT_LT(cpu_watched, 2 * cpu_alone + 0.25);

  for (auto& w : watchers) w->ctx.TryCancel();
  for (auto& w : watchers) w->reader->Finish();
  ASSERT_TRUE(runner->CancelJob(busy->id()).ok());
}

TEST(WatchFlagsTest, LathedRefusesAStreamLifeUnderASecond) {
  std::string root = TestRoot("watch-flags");
  std::string out;
  int rc = RunCommand({Binaries().lathed, "--insecure", "--listen=127.0.0.1:0",
                       "--data_dir=" + root, "--max_stream_seconds=0"},
                      &out, absl::Seconds(20));
  EXPECT_EQ(rc, 1) << out;
  EXPECT_TRUE(
      absl::StrContains(out, "--max_stream_seconds: must be at least 1"))
      << out;
}

// Its own lathed: streams end after two seconds.
TEST(WatchLifetimeTest, StreamsEndAfterMaxStreamSecondsAndTheClientReattaches) {
  auto cluster =
      Cluster::Start(TestRoot("watch-life"), 0, {"--max_stream_seconds=2"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune",
                                    nullptr);
  ASSERT_TRUE(file.ok());
  auto job = c.client().CreateJob(DemoJob(file->id(), 1));  // queued: no worker
  ASSERT_TRUE(job.ok());

  auto stub = v1::FineTuning::NewStub(c.NewChannel());
  absl::Time opened = absl::Now();
  auto w = OpenWatch(*stub, c.api_key(), job->id());
  v1::WatchJobResponse u;
  int read = 0;
  while (w->reader->Read(&u)) ++read;
  grpc::Status st = w->reader->Finish();
  absl::Duration lived = absl::Now() - opened;
  EXPECT_EQ(read, 2);  // created, queued
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "re-attach"))
      << st.error_message();
  EXPECT_GE(lived, absl::Seconds(1.5));
  EXPECT_LT(lived, absl::Seconds(4));

  // The client re-attaches from its cursor: nothing missed, nothing repeated.
  std::vector<std::string> seen;
  std::thread more([&] {
    absl::SleepFor(absl::Seconds(3));
    ASSERT_TRUE(c.client().CancelJob(job->id()).ok());
  });
  absl::Status watched = c.client().WatchJob(
      job->id(), "",
      [&](const v1::WatchJobResponse& u) { seen.push_back(u.event().id()); },
      absl::Now() + absl::Seconds(15));
  more.join();
  EXPECT_TRUE(watched.ok()) << watched;
  std::vector<std::string> all;
  for (const auto& e : AllEvents(c.client(), job->id())) all.push_back(e.id());
  EXPECT_EQ(seen, all);
  EXPECT_EQ(all.size(), 3u);

  // Cursors survive a restart.
  ASSERT_TRUE(c.RestartLathed().ok());
  v1::ListJobEventsRequest r;
  r.set_job_id(job->id());
  r.set_after(all[0]);
  auto page = c.client().ListJobEvents(r);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->data_size(), 2);
  EXPECT_EQ(page->data(0).id(), all[1]);

  // Stopping lathed ends an open stream at once, telling it to re-attach.
  auto queued = c.client().CreateJob(DemoJob(file->id(), 1));
  ASSERT_TRUE(queued.ok());
  auto open = OpenWatch(*v1::FineTuning::NewStub(c.NewChannel()), c.api_key(),
                        queued->id());
  ASSERT_TRUE(open->reader->Read(&u));
  absl::Time stop = absl::Now();
  c.lathed().Signal(SIGTERM);
  while (open->reader->Read(&u)) {
  }
  grpc::Status at_stop = open->reader->Finish();
  EXPECT_EQ(at_stop.error_code(), grpc::StatusCode::UNAVAILABLE)
      << at_stop.error_message();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(3));
  EXPECT_EQ(c.lathed().Wait(absl::Seconds(10)), 0) << c.Logs();
}

}  // namespace
}  // namespace lathe::testing
