// Keys and projects with real processes: every public RPC needs a key; a
// second project probing the first project's ids gets NOT_FOUND, exactly as
// for ids that do not exist; revocation takes effect at once; worker and
// user credentials are not interchangeable.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "common/job_state.h"
#include "lathe/v1/worker.grpc.pb.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = Cluster::Start(TestRoot("auth"), 1);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
    owner_ = cluster_->ClientFor("owner").release();
    auto file = owner_->UploadFile(cluster_->demo_dir() + "/train.jsonl",
                                   "fine-tune", nullptr);
    ASSERT_TRUE(file.ok()) << file.status();
    file_id_ = file->id();
    v1::CreateJobRequest r;
    r.set_model("lathe-demo");
    r.set_training_file(file_id_);
    r.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(1);
    auto job = owner_->CreateJob(r);
    ASSERT_TRUE(job.ok()) << job.status();
    job_id_ = job->id();
    ASSERT_TRUE(owner_->WatchJob(job_id_, "", [](const v1::WatchJobResponse&) {},
                                 absl::Now() + absl::Minutes(3)).ok());
    auto done = owner_->GetJob(job_id_);
    ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << cluster_->Logs();
    fine_tuned_ = done->fine_tuned_model();
  }
  static void TearDownTestSuite() {
    delete owner_;
    delete cluster_;
  }

  static Cluster* cluster_;
  static Client* owner_;
  static std::string file_id_, job_id_, fine_tuned_;
};

Cluster* AuthTest::cluster_ = nullptr;
Client* AuthTest::owner_ = nullptr;
std::string AuthTest::file_id_, AuthTest::job_id_, AuthTest::fine_tuned_;

// Each RPC of the public API that takes an id, called by `c` on `id`.
std::vector<std::pair<std::string, absl::Status>> ProbeAll(Client& c,
                                                           const std::string& file_id,
                                                           const std::string& job_id,
                                                           const std::string& model_id,
                                                           const std::string& dir) {
  std::vector<std::pair<std::string, absl::Status>> out;
  out.push_back({"GetFile", c.GetFile(file_id).status()});
  out.push_back({"DownloadFile", c.DownloadFile(file_id, dir + "/f", nullptr)});
  out.push_back({"DeleteFile", c.DeleteFile(file_id)});
  out.push_back({"GetJob", c.GetJob(job_id).status()});
  out.push_back({"CancelJob", c.CancelJob(job_id).status()});
  out.push_back({"PauseJob", c.PauseJob(job_id).status()});
  out.push_back({"ResumeJob", c.ResumeJob(job_id).status()});
  v1::ListJobEventsRequest ev;
  ev.set_job_id(job_id);
  out.push_back({"ListJobEvents", c.ListJobEvents(ev).status()});
  out.push_back({"WatchJob", c.WatchJob(job_id, "", [](const v1::WatchJobResponse&) {},
                                        absl::Now() + absl::Seconds(5))});
  out.push_back({"ListJobCheckpoints", c.ListJobCheckpoints(job_id).status()});
  out.push_back({"DownloadAdapter", c.DownloadAdapter(job_id, dir, nullptr).status()});
  out.push_back({"DownloadCheckpoint", c.DownloadCheckpoint(job_id, 0, dir, nullptr).status()});
  out.push_back({"GetModel", c.GetModel(model_id).status()});
  v1::CreateJobRequest create;
  create.set_model("lathe-demo");
  create.set_training_file(file_id);
  out.push_back({"CreateJob(training_file)", c.CreateJob(create).status()});
  create.set_model(model_id);
  out.push_back({"CreateJob(model)", c.CreateJob(create).status()});
  v1::ListJobsRequest jobs_after;
  jobs_after.set_after(job_id);
  out.push_back({"ListJobs(after)", c.ListJobs(jobs_after).status()});
  v1::ListFilesRequest files_after;
  files_after.set_after(file_id);
  out.push_back({"ListFiles(after)", c.ListFiles(files_after).status()});
  return out;
}

// `message` with each of `ids` replaced by "<id>": what a probe of an id
// and of a missing one must both read as.
std::string WithoutIds(std::string message,
                       const std::vector<std::string>& ids) {
  for (const std::string& id : ids) {
    for (size_t at; (at = message.find(id)) != std::string::npos;)
      message.replace(at, id.size(), "<id>");
  }
  return message;
}

TEST_F(AuthTest, AnotherProjectSeesNothingAndGetsNotFoundLikeMissingIds) {
  auto other = cluster_->ClientFor("intruder");
  std::string dir = cluster_->root() + "/probe";
  auto probes = ProbeAll(*other, file_id_, job_id_, fine_tuned_, dir);
  auto missing = ProbeAll(*other, "file-doesnotexist", "ftjob-doesnotexist",
                          "ft:lathe-demo:x:doesnotexist", dir);
  ASSERT_EQ(probes.size(), missing.size());
  const std::vector<std::string> ids = {file_id_,
                                        job_id_,
                                        fine_tuned_,
                                        "file-doesnotexist",
                                        "ftjob-doesnotexist",
                                        "ft:lathe-demo:x:doesnotexist"};
  for (size_t i = 0; i < probes.size(); ++i) {
    // Cursors are refused as unknown, the rest is not found; either way
    // exactly as for an id that does not exist, to the letter.
    EXPECT_TRUE(absl::IsNotFound(probes[i].second) ||
                absl::IsInvalidArgument(probes[i].second))
        << probes[i].first << ": " << probes[i].second;
    EXPECT_EQ(probes[i].second.code(), missing[i].second.code())
        << probes[i].first << ": " << probes[i].second << " vs "
        << missing[i].second;
    EXPECT_EQ(WithoutIds(std::string(probes[i].second.message()), ids),
              WithoutIds(std::string(missing[i].second.message()), ids))
        << probes[i].first;
  }
  // Lists hold nothing of the owner's.
  EXPECT_EQ(other->ListFiles({})->data_size(), 0);
  EXPECT_EQ(other->ListJobs({})->data_size(), 0);
  auto models = other->ListModels();
  ASSERT_TRUE(models.ok());
  for (const auto& m : models->data()) {
    EXPECT_EQ(m.kind(), "base");
    // Where a base model lives on the server is not a project's business.
    EXPECT_EQ(m.path(), "") << m.id();
  }
  EXPECT_EQ(other->GetModel("lathe-demo")->path(), "");
  EXPECT_NE(cluster_->admin().GetModel("lathe-demo")->path(), "");
  // The owner's data is untouched by the probes.
  auto job = owner_->GetJob(job_id_);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->status(), v1::JOB_STATUS_SUCCEEDED);
  EXPECT_TRUE(owner_->GetFile(file_id_).ok());
  EXPECT_EQ(owner_->ListJobs({})->data_size(), 1);
  EXPECT_TRUE(owner_->GetModel(fine_tuned_).ok());
}

TEST_F(AuthTest, CallsWithoutAValidKeyAreUnauthenticated) {
  Client none(cluster_->NewChannel(), "");
  Client wrong(cluster_->NewChannel(), "sk-not-a-key");
  for (Client* c : {&none, &wrong}) {
    EXPECT_TRUE(absl::IsUnauthenticated(c->ListFiles({}).status()));
    EXPECT_TRUE(absl::IsUnauthenticated(c->GetJob(job_id_).status()));
    EXPECT_TRUE(absl::IsUnauthenticated(c->ListModels().status()));
    EXPECT_TRUE(absl::IsUnauthenticated(
        c->UploadFile(cluster_->demo_dir() + "/train.jsonl", "fine-tune", nullptr).status()));
  }
}

TEST_F(AuthTest, RevocationTakesEffectAtOnce) {
  v1::CreateApiKeyRequest r;
  r.set_project("short-lived");
  auto key = cluster_->admin().CreateApiKey(r);
  ASSERT_TRUE(key.ok());
  Client c(cluster_->NewChannel(), key->secret());
  ASSERT_TRUE(c.ListJobs({}).ok());
  ASSERT_TRUE(cluster_->admin().RevokeApiKey(key->id()).ok());
  EXPECT_TRUE(absl::IsUnauthenticated(c.ListJobs({}).status()));
  auto listed = cluster_->admin().ListApiKeys("short-lived");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->data_size(), 1);
  EXPECT_GT(listed->data(0).revoked_at(), 0);
  EXPECT_TRUE(listed->data(0).secret().empty());  // never shown again
}

TEST_F(AuthTest, UserKeysAreNotAdminKeys) {
  v1::CreateApiKeyRequest r;
  r.set_project("x");
  EXPECT_TRUE(absl::IsPermissionDenied(owner_->CreateApiKey(r).status()));
  EXPECT_TRUE(absl::IsPermissionDenied(owner_->ListApiKeys("").status()));
  r.set_role("root");
  EXPECT_TRUE(absl::IsInvalidArgument(cluster_->admin().CreateApiKey(r).status()));
  r.set_role("user");
  r.set_project("../etc");
  EXPECT_TRUE(absl::IsInvalidArgument(cluster_->admin().CreateApiKey(r).status()));
}

TEST_F(AuthTest, WorkerTokenAndUserKeysAreNotInterchangeable) {
  std::string token(absl::StripAsciiWhitespace(
      ReadFileOrEmpty(cluster_->root() + "/data/worker.token")));
  ASSERT_FALSE(token.empty());
  // The worker token is not a user key.
  Client as_user(cluster_->NewChannel(), token);
  EXPECT_TRUE(absl::IsUnauthenticated(as_user.ListJobs({}).status()));
  EXPECT_TRUE(absl::IsUnauthenticated(as_user.GetJob(job_id_).status()));

  // A user (or admin) key is not the worker token, even over a channel
  // with a valid worker client certificate.
  auto channel = cluster_->NewWorkerChannel();
  auto worker = v1::Worker::NewStub(channel);
  for (const std::string& secret : {cluster_->api_key(), std::string("")}) {
    grpc::ClientContext ctx;
    if (!secret.empty()) ctx.AddMetadata("authorization", "Bearer " + secret);
    v1::FetchFileRequest r;
    r.set_job_id(job_id_);
    r.set_attempt(1);
    r.set_file_id(file_id_);
    auto reader = worker->FetchFile(&ctx, r);
    v1::FileChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + cluster_->api_key());
  auto stream = worker->Connect(&ctx);
  v1::WorkerReport report;
  report.set_worker_id("impostor");
  stream->Write(report);
  v1::WorkerDirective d;
  EXPECT_FALSE(stream->Read(&d));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace lathe::testing
