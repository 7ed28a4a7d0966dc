// The operations called directly, as any transport calls them: no gRPC, a
// real SQLite file and blob store in a temporary folder.
#include "server/operations/operations.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;

constexpr char kLine[] =
    R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})"
    "\n";
constexpr char kWorkerToken[] = "wt-secret";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class OperationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl =
        (fs::temp_directory_path() / "lathe-ops-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    store_ = *store::Store::Open(dir_ + "/lathe.db");
    blobs_ = *store::BlobStore::Open(dir_);
    v1::Model m;
    m.set_id("tiny");
    m.set_path("/models/tiny");
    ASSERT_TRUE(store_->RegisterModel(m).ok());
    coordinator_ = *Coordinator::Create(*store_, {});
    auth_ = std::make_unique<Authenticator>(*store_, kWorkerToken);
    feed_ = std::make_unique<EventFeed>(*store_, *auth_, EventFeedOptions{});
    OperationOptions options;
    options.max_uploads_in_flight_per_key = 2;
    ops_ = std::make_unique<Operations>(OperationDeps{
        store_.get(), blobs_.get(), coordinator_.get(), feed_.get(), options});
    alice_ = *CreateApiKey(*store_, "p", "user", "alice");
    bob_ = *CreateApiKey(*store_, "q", "user", "bob");
  }

  void TearDown() override {
    ops_.reset();
    feed_.reset();
    auth_.reset();
    coordinator_.reset();
    blobs_.reset();
    store_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // As a transport authenticates: from the `authorization` header.
  Caller As(const v1::ApiKey& key) {
    auto caller = auth_->User("Bearer " + key.secret());
    EXPECT_TRUE(caller.ok()) << caller.status();
    return caller.ok() ? *caller : Caller{};
  }

  v1::UploadFileHeader Header(int64_t bytes) {
    v1::UploadFileHeader h;
    h.set_filename("train.jsonl");
    h.set_purpose("fine-tune");
    h.set_bytes(bytes);
    return h;
  }

  // Uploads `body` in `chunk`-byte pieces.
  absl::StatusOr<v1::File> Upload(const Caller& caller, const std::string& body,
                                  size_t chunk = 7) {
    auto session = ops_->files.StartUpload(caller);
    if (!session.ok()) return session.status();
    if (auto st = (*session)->Begin(Header(body.size())); !st.ok()) return st;
    for (size_t i = 0; i < body.size(); i += chunk) {
      if (auto st = (*session)->Add(absl::string_view(body).substr(i, chunk));
          !st.ok()) {
        return st;
      }
    }
    return (*session)->Finish();
  }

  v1::Job CreateJob(const Caller& caller) {
    auto file = Upload(caller, std::string(kLine) + kLine);
    EXPECT_TRUE(file.ok()) << file.status();
    v1::CreateJobRequest r;
    r.set_model("tiny");
    r.set_training_file(file.ok() ? file->id() : "");
    auto job = ops_->jobs.CreateJob(caller, r);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }

  int FilesOf(const Caller& caller) {
    auto page = ops_->files.ListFiles(caller, {});
    return page.ok() ? page->data_size() : -1;
  }

  std::string dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<store::BlobStore> blobs_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<EventFeed> feed_;
  std::unique_ptr<Operations> ops_;
  v1::ApiKey alice_, bob_;
};

TEST_F(OperationsTest, AuthenticatesFromTheBearerString) {
  auto none = auth_->User(std::nullopt);
  EXPECT_TRUE(absl::IsUnauthenticated(none.status()));
  EXPECT_TRUE(absl::StrContains(none.status().message(), "no API key"))
      << none.status();
  auto basic = auth_->User("Basic abc");
  EXPECT_TRUE(absl::IsUnauthenticated(basic.status()));
  EXPECT_TRUE(
      absl::StrContains(basic.status().message(), "expected \"Bearer <key>\""))
      << basic.status();
  auto unknown = auth_->User("Bearer sk-nobody");
  EXPECT_EQ(unknown.status().message(), "unknown API key");

  Caller alice = As(alice_);
  EXPECT_EQ(alice.project, "p");
  EXPECT_EQ(alice.key_id, alice_.id());
  EXPECT_FALSE(alice.admin);
  EXPECT_TRUE(
      absl::IsPermissionDenied(ops_->admin.ListApiKeys(alice, {}).status()));
  v1::RegisterModelRequest reg;
  reg.set_name("m");
  reg.set_path("/nowhere");
  EXPECT_TRUE(absl::IsPermissionDenied(
      ops_->models.RegisterModel(alice, reg).status()));

  // A revoked key is refused, and a long call that rechecks it ends.
  ASSERT_TRUE(auth_->Recheck(alice).ok());
  ASSERT_TRUE(store_->RevokeApiKey(alice_.id()).ok());
  auto revoked = auth_->User("Bearer " + alice_.secret());
  EXPECT_EQ(revoked.status().message(),
            absl::StrCat("API key ", alice_.id(), " was revoked"));
  EXPECT_TRUE(absl::IsUnauthenticated(auth_->Recheck(alice)));

  // Worker token and API keys are not interchangeable.
  EXPECT_TRUE(auth_->Worker(absl::StrCat("Bearer ", kWorkerToken), false).ok());
  EXPECT_TRUE(absl::IsUnauthenticated(
      auth_->Worker("Bearer " + bob_.secret(), false).status()));
  EXPECT_TRUE(absl::IsUnauthenticated(
      auth_->User(absl::StrCat("Bearer ", kWorkerToken)).status()));
  Authenticator mtls(*store_, kWorkerToken,
                     /*require_worker_certificate=*/true);
  EXPECT_TRUE(absl::IsUnauthenticated(
      mtls.Worker(absl::StrCat("Bearer ", kWorkerToken), false).status()));
  EXPECT_TRUE(mtls.Worker(absl::StrCat("Bearer ", kWorkerToken), true).ok());
}

TEST_F(OperationsTest, AnUploadFedInChunksIsStoredWhole) {
  Caller alice = As(alice_);
  const std::string body =
      std::string(kLine) + "\n" + kLine;         // a blank line too
  auto file = Upload(alice, body, /*chunk=*/5);  // lines cut across chunks
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->bytes(), static_cast<int64_t>(body.size()));
  EXPECT_EQ(file->line_count(), 2);
  EXPECT_EQ(file->format(), "chat");
  EXPECT_EQ(file->sha256(), Sha256Hex(body));
  EXPECT_EQ(file->project(), "p");
  EXPECT_EQ(ops_->files.uploads_in_flight(), 0);  // the slot is back

  v1::GetFileRequest get;
  get.set_file_id(file->id());
  EXPECT_EQ(ops_->files.GetFile(alice, get)->id(), file->id());
  v1::DownloadFileRequest download;
  download.set_file_id(file->id());
  auto path = ops_->files.DownloadFile(alice, download);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadAll(*path), body);
  // Another project's file reads as a missing one, to the letter.
  auto foreign = ops_->files.GetFile(As(bob_), get).status();
  get.set_file_id("file-missing");
  auto missing = ops_->files.GetFile(As(bob_), get).status();
  EXPECT_TRUE(absl::IsNotFound(foreign)) << foreign;
  EXPECT_EQ(foreign.message(), absl::StrCat("no such file: ", file->id()));
  EXPECT_EQ(missing.message(), "no such file: file-missing");
}

TEST_F(OperationsTest, AnUploadCutShortOrRefusedStoresNothing) {
  Caller alice = As(alice_);
  const std::string body = std::string(kLine) + kLine;
  {
    // Cut short at a line end: the announced size tells.
    auto session = *ops_->files.StartUpload(alice);
    ASSERT_TRUE(session->Begin(Header(body.size())).ok());
    ASSERT_TRUE(session->Add(kLine).ok());
    auto cut = session->Finish();
    EXPECT_TRUE(absl::IsDataLoss(cut.status())) << cut.status();
    EXPECT_TRUE(
        absl::StrContains(cut.status().message(), "interrupted upload"));
  }
  {
    // The client went away: nothing stored, whatever arrived.
    auto session = *ops_->files.StartUpload(alice);
    ASSERT_TRUE(session->Begin(Header(body.size())).ok());
    ASSERT_TRUE(session->Add(body).ok());
    absl::Status aborted = session->Abort();
    EXPECT_TRUE(absl::IsCancelled(aborted)) << aborted;
    EXPECT_TRUE(absl::StrContains(aborted.message(), "nothing stored"));
    EXPECT_TRUE(absl::IsCancelled(session->Finish().status()));  // over
  }
  {
    // A bad line ends the upload at once, naming the line.
    auto session = *ops_->files.StartUpload(alice);
    ASSERT_TRUE(session->Begin(Header(100)).ok());
    absl::Status bad = session->Add(std::string(kLine) + "{oops\n");
    EXPECT_TRUE(absl::IsInvalidArgument(bad)) << bad;
    EXPECT_TRUE(absl::StartsWith(bad.message(), "line 2:")) << bad;
    EXPECT_EQ(session->Add(kLine), bad);  // the same error from then on
  }
  {
    // The header comes first and once.
    auto session = *ops_->files.StartUpload(alice);
    absl::Status early = session->Add(kLine);
    EXPECT_TRUE(absl::IsInvalidArgument(early));
    EXPECT_TRUE(absl::StartsWith(early.message(), "header:")) << early;
    auto twice = *ops_->files.StartUpload(alice);
    ASSERT_TRUE(twice->Begin(Header(10)).ok());
    EXPECT_EQ(twice->Begin(Header(10)).message(), "header: sent twice");
  }
  {
    // Neither size nor hash: refused before any byte is read.
    auto session = *ops_->files.StartUpload(alice);
    absl::Status st = session->Begin(Header(0));
    EXPECT_TRUE(absl::StartsWith(st.message(), "bytes: required")) << st;
  }
  EXPECT_EQ(FilesOf(alice), 0);
  EXPECT_TRUE(store_->ReferencedBlobs()->empty());
  EXPECT_TRUE(fs::is_empty(dir_ + "/tmp"));  // partial blobs removed
}

TEST_F(OperationsTest, UploadsInFlightAreCappedPerKey) {
  Caller alice = As(alice_);
  auto first = ops_->files.StartUpload(alice);  // the key's limit is 2
  auto second = ops_->files.StartUpload(alice);
  ASSERT_TRUE(first.ok() && second.ok());
  auto third = ops_->files.StartUpload(alice);
  EXPECT_TRUE(absl::IsResourceExhausted(third.status()));
  EXPECT_TRUE(absl::StartsWith(third.status().message(),
                               "max_uploads_in_flight_per_key:"));
  EXPECT_TRUE(ops_->files.StartUpload(As(bob_)).ok());  // another key's own
  first->reset();                                       // ended, unfinished
  EXPECT_TRUE(ops_->files.StartUpload(alice).ok());
}

TEST_F(OperationsTest, CreatePauseResumeAndCancelAJob) {
  Caller alice = As(alice_);
  v1::Job job = CreateJob(alice);
  EXPECT_EQ(job.status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(job.queue_position(), 1);
  EXPECT_EQ(job.project(), "p");

  v1::PauseJobRequest pause;
  pause.set_job_id(job.id());
  auto paused = ops_->jobs.PauseJob(alice, pause);
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->status(), v1::JOB_STATUS_PAUSED);
  EXPECT_EQ(paused->queue_position(), 0);
  v1::ResumeJobRequest resume;
  resume.set_job_id(job.id());
  auto resumed = ops_->jobs.ResumeJob(alice, resume);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->status(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(resumed->queue_position(), 1);
  EXPECT_TRUE(
      absl::IsFailedPrecondition(ops_->jobs.ResumeJob(alice, resume).status()));

  // Another project can neither see nor touch it.
  v1::CancelJobRequest cancel;
  cancel.set_job_id(job.id());
  auto foreign = ops_->jobs.CancelJob(As(bob_), cancel).status();
  EXPECT_EQ(foreign.message(), absl::StrCat("no such job: ", job.id()));
  v1::GetJobRequest get;
  get.set_job_id(job.id());
  EXPECT_TRUE(absl::IsNotFound(ops_->jobs.GetJob(As(bob_), get).status()));

  auto cancelled = ops_->jobs.CancelJob(alice, cancel);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->status(), v1::JOB_STATUS_CANCELLED);
  auto again = ops_->jobs.CancelJob(alice, cancel).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(again));
  EXPECT_EQ(again.message(),
            absl::StrCat("job ", job.id(), " is already cancelled"));

  v1::ListJobEventsRequest events;
  events.set_job_id(job.id());
  auto listed = ops_->jobs.ListJobEvents(alice, events);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->data(listed->data_size() - 1).status(),
            v1::JOB_STATUS_CANCELLED);
  events.set_limit(1001);
  EXPECT_EQ(ops_->jobs.ListJobEvents(alice, events).status().message(),
            "limit: must be 1..1000");
}

// A merge's inputs are checked against the jobs that made them before
// anything is stored: a prompt-tuning or DoRA adapter is not mergeable,
// and a LoRA result (lora_rank) over inputs none of which is LoRA must name
// its target modules.
TEST_F(OperationsTest, DeleteModelRemovesAFineTunesAdapterAndNothingElse) {
  Caller alice = As(alice_);
  auto file = Upload(alice, std::string(kLine) + kLine);
  ASSERT_TRUE(file.ok()) << file.status();
  // A finished job with a result file whose blob is stored.
  auto finished = [&](const std::string& name, absl::string_view bytes) {
    v1::CreateJobRequest r;
    r.set_model("tiny");
    r.set_training_file(file->id());
    auto job = ops_->jobs.CreateJob(alice, r);
    EXPECT_TRUE(job.ok()) << job.status();
    store::TransitionUpdate run;
    run.attempt = 1;
    run.worker_id = "w1";
    EXPECT_TRUE(store_->Transition(job->id(), v1::JOB_STATUS_QUEUED,
                                   v1::JOB_STATUS_RUNNING, std::nullopt, run)
                    .ok());
    auto w = blobs_->NewWriter();
    EXPECT_TRUE(w.ok());
    EXPECT_TRUE((*w)->Append(bytes).ok());
    auto sha = (*w)->Commit();
    EXPECT_TRUE(sha.ok()) << sha.status();
    v1::ResultFile f;
    f.set_name("adapter_model.safetensors");
    f.set_bytes(static_cast<int64_t>(bytes.size()));
    f.set_sha256(*sha);
    EXPECT_TRUE(store_->PutResultFile(job->id(), f).ok());
    store::TransitionUpdate done;
    done.fine_tuned_model = "ft:tiny:" + name;
    EXPECT_TRUE(store_->Transition(job->id(), v1::JOB_STATUS_RUNNING,
                                   v1::JOB_STATUS_SUCCEEDED, 1, done)
                    .ok());
    return std::make_pair(job->id(), *sha);
  };
  auto [a_job, a_blob] = finished("a", "adapter a");
  auto [b_job, b_blob] = finished("b", "adapter b");
  auto del = [&](const Caller& c, const std::string& id) {
    v1::DeleteModelRequest r;
    r.set_model_id(id);
    return ops_->models.DeleteModel(c, r);
  };
  // Another project's, a base model, and one an unfinished merge uses.
  EXPECT_TRUE(absl::IsNotFound(del(As(bob_), "ft:tiny:a").status()));
  EXPECT_TRUE(absl::IsPermissionDenied(del(alice, "tiny").status()));
  v1::CreateJobRequest merge;
  merge.set_model("tiny");
  merge.mutable_method()->set_type("merge");
  merge.mutable_method()->mutable_merge()->add_inputs("ft:tiny:a");
  merge.mutable_method()->mutable_merge()->add_inputs("ft:tiny:b");
  auto merging = ops_->jobs.CreateJob(alice, merge);
  ASSERT_TRUE(merging.ok()) << merging.status();
  auto busy = del(alice, "ft:tiny:b");
  EXPECT_TRUE(absl::IsFailedPrecondition(busy.status())) << busy.status();
  EXPECT_TRUE(absl::StrContains(busy.status().message(), merging->id())) << busy.status();
  ASSERT_TRUE(coordinator_->CancelJob(merging->id()).ok());

  auto gone = del(alice, "ft:tiny:a");
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->id(), "ft:tiny:a");
  EXPECT_TRUE(gone->deleted());
  v1::GetModelRequest get;
  get.set_model_id("ft:tiny:a");
  EXPECT_TRUE(absl::IsNotFound(ops_->models.GetModel(alice, get).status()));
  auto models = ops_->models.ListModels(alice, {});
  ASSERT_TRUE(models.ok());
  std::vector<std::string> ids;
  for (const auto& m : models->data()) ids.push_back(m.id());
  EXPECT_EQ(ids, (std::vector<std::string>{"tiny", "ft:tiny:b"}));
  // The job stays, without its model and files; the blob is gone, the
  // other job's is not.
  v1::GetJobRequest job;
  job.set_job_id(a_job);
  auto a = ops_->jobs.GetJob(alice, job);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->status(), v1::JOB_STATUS_SUCCEEDED);
  EXPECT_EQ(a->fine_tuned_model(), "");
  EXPECT_EQ(a->result_files_size(), 0);
  EXPECT_FALSE(blobs_->Exists(a_blob));
  EXPECT_TRUE(blobs_->Exists(b_blob));
  v1::DownloadAdapterRequest dl;
  dl.set_job_id(a_job);
  EXPECT_FALSE(ops_->jobs.DownloadAdapter(alice, dl).ok());
  EXPECT_TRUE(absl::IsNotFound(del(alice, "ft:tiny:a").status()));  // once
}

TEST_F(OperationsTest, MergeInputsMustBeMergeableAdapters) {
  Caller alice = As(alice_);
  auto file = Upload(alice, std::string(kLine) + kLine);
  ASSERT_TRUE(file.ok()) << file.status();
  // One finished job of each kind, each with its fine-tuned model.
  auto fine_tune = [&](const std::string& name, auto configure) {
    v1::CreateJobRequest r;
    r.set_model("tiny");
    r.set_training_file(file->id());
    configure(r);
    auto job = ops_->jobs.CreateJob(alice, r);
    EXPECT_TRUE(job.ok()) << name << ": " << job.status();
    if (!job.ok()) return std::string();
    // Run and succeed, as the coordinator records it.
    store::TransitionUpdate run;
    run.attempt = 1;
    run.worker_id = "w1";
    EXPECT_TRUE(store_->Transition(job->id(), v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_RUNNING,
                                   std::nullopt, run)
                    .ok());
    store::TransitionUpdate done;
    done.fine_tuned_model = "ft:tiny:" + name;
    auto succeeded = store_->Transition(job->id(), v1::JOB_STATUS_RUNNING,
                                        v1::JOB_STATUS_SUCCEEDED, 1, done);
    EXPECT_TRUE(succeeded.ok()) << succeeded.status();
    return "ft:tiny:" + name;
  };
  const std::string full1 = fine_tune("full1", [](auto& r) { r.set_adapter(v1::ADAPTER_TYPE_FULL); });
  const std::string full2 = fine_tune("full2", [](auto& r) { r.set_adapter(v1::ADAPTER_TYPE_FULL); });
  const std::string lora = fine_tune("lora", [](auto&) {});
  const std::string dora = fine_tune("dora", [](auto& r) { r.mutable_lora()->set_use_dora(true); });
  const std::string prompt =
      fine_tune("prompt", [](auto& r) { r.mutable_method()->set_type("prompt_tuning"); });
  const int stored = [&] {
    auto page = ops_->jobs.ListJobs(alice, {});
    return page.ok() ? page->data_size() : -1;
  }();
  auto merge = [&](std::vector<std::string> inputs, bool lora_result) {
    v1::CreateJobRequest r;
    r.set_model("tiny");
    r.mutable_method()->set_type("merge");
    for (const std::string& i : inputs) r.mutable_method()->mutable_merge()->add_inputs(i);
    if (lora_result) r.mutable_method()->mutable_merge()->set_lora_rank(8);
    return ops_->jobs.CreateJob(alice, r).status();
  };
  absl::Status st = merge({lora, dora}, false);
  EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
  EXPECT_TRUE(absl::StartsWith(st.message(), "method.merge.inputs[1]: ft:tiny:dora is a DoRA")) << st;
  st = merge({prompt, lora}, false);
  EXPECT_TRUE(absl::StartsWith(st.message(), "method.merge.inputs[0]: ft:tiny:prompt is a prompt-tuning"))
      << st;
  st = merge({full1, full2}, true);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_TRUE(absl::StartsWith(st.message(), "method.merge.lora_target_modules:")) << st;
  auto page = ops_->jobs.ListJobs(alice, {});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->data_size(), stored);  // nothing stored
  // Fine: full fine-tunes as a folder; a LoRA result with a LoRA input.
  EXPECT_TRUE(merge({full1, full2}, false).ok());
  EXPECT_TRUE(merge({full1, lora}, true).ok());
}

TEST_F(OperationsTest, NextJobEventsWaitsForNewsUntilItsDeadline) {
  Caller alice = As(alice_);
  v1::Job job = CreateJob(alice);
  v1::WatchJobRequest watch;
  watch.set_job_id(job.id());
  auto first =
      ops_->jobs.NextJobEvents(alice, watch, absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->updates.size(), 2u);  // created, queued
  EXPECT_FALSE(first->finished);

  // Nothing new: empty at the deadline.
  watch.set_after(first->updates.back().event().id());
  absl::Time start = absl::Now();
  auto idle =
      ops_->jobs.NextJobEvents(alice, watch, start + absl::Milliseconds(100));
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_TRUE(idle->updates.empty());
  EXPECT_FALSE(idle->finished);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));

  // An event written while it waits comes back at once.
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(50));
    v1::CancelJobRequest cancel;
    cancel.set_job_id(job.id());
    EXPECT_TRUE(ops_->jobs.CancelJob(alice, cancel).ok());
  });
  auto news =
      ops_->jobs.NextJobEvents(alice, watch, absl::Now() + absl::Seconds(30));
  canceller.join();
  ASSERT_TRUE(news.ok()) << news.status();
  ASSERT_EQ(news->updates.size(), 1u);
  EXPECT_EQ(news->updates[0].job().status(), v1::JOB_STATUS_CANCELLED);
  watch.set_after(news->updates[0].event().id());
  auto end =
      ops_->jobs.NextJobEvents(alice, watch, absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(end.ok());
  EXPECT_TRUE(end->finished);

  // Another project's job is refused.
  EXPECT_TRUE(absl::IsNotFound(
      ops_->jobs.NextJobEvents(As(bob_), watch, absl::Now()).status()));
}

TEST(PeerHostTest, TheHostOfEachKindOfPeerAddress) {
  EXPECT_EQ(PeerHost("ipv4:127.0.0.1:42076"), "127.0.0.1");
  EXPECT_EQ(PeerHost("ipv4:10.1.2.3:5"), "10.1.2.3");
  EXPECT_EQ(PeerHost("ipv6:[::1]:5"), "[::1]");
  EXPECT_EQ(PeerHost("ipv6:%5Bfe80::1%5D:50051"), "[fe80::1]");
  EXPECT_EQ(PeerHost("unix:/run/lathe.sock"), "127.0.0.1");
  EXPECT_EQ(PeerHost("ipv6:::1"), "");
  EXPECT_EQ(PeerHost("somewhere"), "");
}

TEST_F(OperationsTest, AWorkerRunsAJobFetchesItsDataAndUploadsItsResult) {
  Caller alice = As(alice_);
  v1::Job job = CreateJob(alice);
  WorkerCaller worker =
      *auth_->Worker(absl::StrCat("Bearer ", kWorkerToken), false);
  v1::WorkerReport idle;
  idle.set_worker_id("w1");
  v1::Device* cpu = idle.add_devices();
  cpu->set_kind("cpu");
  cpu->set_memory_bytes(1LL << 40);
  auto directive = ops_->worker.Report(worker, idle);
  ASSERT_TRUE(directive.ok()) << directive.status();
  ASSERT_TRUE(directive->has_assignment());
  const int32_t attempt = directive->assignment().attempt();

  v1::FetchFileRequest fetch;
  fetch.set_job_id(job.id());
  fetch.set_attempt(attempt);
  fetch.set_file_id(job.training_file());
  auto path = ops_->worker.FetchFile(worker, fetch);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadAll(*path), std::string(kLine) + kLine);
  fetch.set_attempt(attempt + 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      ops_->worker.FetchFile(worker, fetch).status()));

  const std::string adapter = "adapter bytes";
  v1::UploadResultHeader h;
  h.set_job_id(job.id());
  h.set_attempt(attempt);
  h.set_name("adapter_model.safetensors");
  h.set_bytes(adapter.size());
  h.set_sha256(Sha256Hex(adapter));
  auto upload = ops_->worker.StartResultUpload(worker);
  ASSERT_TRUE(upload->Begin(h).ok());
  ASSERT_TRUE(upload->Add(adapter.substr(0, 4)).ok());
  ASSERT_TRUE(upload->Add(adapter.substr(4)).ok());
  auto stored = upload->Finish();
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(store_->ResultFiles(job.id())->size(), 1u);

  // A file the job does not produce, or a superseded attempt's, is refused.
  auto other = ops_->worker.StartResultUpload(worker);
  h.set_name("evil.sh");
  EXPECT_TRUE(absl::IsInvalidArgument(other->Begin(h)));
  auto late = ops_->worker.StartResultUpload(worker);
  h.set_name("adapter_config.json");
  h.set_attempt(attempt + 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(late->Begin(h)));
}

}  // namespace
}  // namespace lathe
