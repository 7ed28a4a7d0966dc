#include "tests/fault_util.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "lathe/v1/worker.grpc.pb.h"
#include "server/store/database.h"

namespace lathe::testing {

namespace fs = std::filesystem;


uint32_t FaultSeed(const std::string& suite, uint32_t fallback) {
  uint32_t seed = fallback;
  const char* env = std::getenv("LATHE_FAULT_SEED");
  if (env != nullptr && *env != '\0' && !absl::SimpleAtoi(env, &seed)) seed = fallback;
  Figure(suite, "seed", absl::StrCat(seed, " (replay: LATHE_FAULT_SEED=", seed, ")"));
  return seed;
}

void Figure(const std::string& suite, const std::string& name,
            const std::string& value) {
  std::printf("FAULT-FIGURES: %-16s %s: %s\n", suite.c_str(), name.c_str(),
              value.c_str());
  std::fflush(stdout);
}

DataDirState InspectDataDir(const std::string& db_path, const std::string& data_dir,
                            absl::flat_hash_set<std::string>* hashed) {
  DataDirState state;
  auto db = store::Database::Open(db_path);
  EXPECT_TRUE(db.ok()) << db.status();
  if (!db.ok()) return state;
  auto check = (*db)->Prepare("PRAGMA integrity_check");
  EXPECT_TRUE(check.ok()) << check.status();
  if (!check.ok()) return state;
  auto row = check->Step();
  state.integrity_ok = row.ok() && *row && check->ColumnText(0) == "ok";
  // Every table that names a blob, also files of checkpoints never
  // completed: those blobs must stay too. Asked here rather than through
  // Store::ReferencedBlobs(), so that a table the start-up sweep forgets
  // shows up as missing blobs.
  auto refs = (*db)->Prepare(
      "SELECT sha256 FROM files UNION SELECT sha256 FROM result_files "
      "UNION SELECT sha256 FROM checkpoint_files");
  EXPECT_TRUE(refs.ok()) << refs.status();
  if (!refs.ok()) return state;
  absl::flat_hash_set<std::string> referenced;
  while (true) {
    auto more = refs->Step();
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    referenced.insert(refs->ColumnText(0));
  }
  state.referenced = static_cast<int>(referenced.size());
  for (const std::string& sha : referenced) {
    if (hashed->contains(sha)) continue;
    std::string path = data_dir + "/blobs/" + sha.substr(0, 2) + "/" + sha;
    auto actual = Sha256File(path);
    if (actual.ok() && *actual == sha) {
      hashed->insert(sha);
    } else {
      state.bad_blobs.push_back(sha);
    }
  }
  std::error_code ec;
  for (const auto& dir : fs::directory_iterator(data_dir + "/blobs", ec)) {
    for (const auto& f : fs::directory_iterator(dir.path(), ec)) {
      std::string name = f.path().filename().string();
      if (!referenced.contains(name)) state.stray.push_back(name);
    }
  }
  for (const auto& f : fs::directory_iterator(data_dir + "/tmp", ec)) {
    state.tmp.push_back(f.path().filename().string());
  }
  return state;
}

std::string SnapshotDatabase(const std::string& data_dir, const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  for (const char* name : {"lathe.db", "lathe.db-wal"}) {
    fs::path from = fs::path(data_dir) / name;
    if (fs::exists(from, ec)) fs::copy_file(from, fs::path(dir) / name, ec);
    EXPECT_FALSE(ec) << "copying " << from << ": " << ec.message();
  }
  return dir + "/lathe.db";
}

int ExpectAttemptFenced(Cluster& c, const std::string& job_id, int32_t attempt,
                        const std::string& worker_id) {
  const std::string kLate = "late message from a dead attempt";
  const int64_t kLateStep = 999999;
  std::string token(absl::StripAsciiWhitespace(
      ReadFileOrEmpty(c.root() + "/data/worker.token")));
  auto stub = v1::Worker::NewStub(c.NewWorkerChannel());
  auto context = [&] {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    return ctx;
  };
  auto job = c.client().GetJob(job_id);
  EXPECT_TRUE(job.ok()) << job.status();
  if (!job.ok()) return 0;
  EXPECT_GT(job->attempt(), attempt) << "the job has not moved on yet";
  int refused = 0;

  // A report of the dead attempt: events, progress and a checkpoint.
  {
    auto ctx = context();
    auto stream = stub->Connect(ctx.get());
    v1::WorkerReport r;
    r.set_worker_id(worker_id);
    v1::RunningAttempt* a = r.mutable_attempt();
    a->set_job_id(job_id);
    a->set_attempt(attempt);
    a->set_step(kLateStep);
    a->set_total_steps(kLateStep);
    v1::AttemptEvent* e = a->add_events();
    e->set_seq(kLateStep);
    e->mutable_event()->set_type("message");
    e->mutable_event()->set_level("info");
    e->mutable_event()->set_message(kLate);
    v1::CheckpointReport* cp = a->add_checkpoints();
    cp->set_step(kLateStep);
    cp->add_files("adapter_model.safetensors");
    v1::WorkerDirective d;
    EXPECT_TRUE(stream->Write(r) && stream->Read(&d)) << "no directive";
    EXPECT_TRUE(d.superseded() && d.stop()) << d.ShortDebugString();
    EXPECT_EQ(d.acked_checkpoints_size(), 0);
    EXPECT_FALSE(d.has_assignment());
    refused += d.superseded() ? 1 : 0;
    stream->WritesDone();
    stream->Finish();
  }
  // Uploads of the dead attempt: the adapter and a checkpoint file.
  const std::string kBytes = "late bytes";
  for (int64_t step : {int64_t{0}, kLateStep}) {
    auto ctx = context();
    v1::ResultFile stored;
    auto writer = stub->UploadResult(ctx.get(), &stored);
    v1::UploadResultRequest head;
    v1::UploadResultHeader* h = head.mutable_header();
    h->set_job_id(job_id);
    h->set_attempt(attempt);
    h->set_name("adapter_model.safetensors");
    h->set_bytes(static_cast<int64_t>(kBytes.size()));
    h->set_sha256(Sha256Hex(kBytes));
    h->set_checkpoint_step(step);
    v1::UploadResultRequest chunk;
    chunk.set_chunk(kBytes);
    if (writer->Write(head)) writer->Write(chunk);
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << "upload for step " << step << ": " << st.error_message();
    refused += st.error_code() == grpc::StatusCode::FAILED_PRECONDITION ? 1 : 0;
  }
  // Fetches of the dead attempt: its training file and a checkpoint file.
  auto expect_refused = [&](grpc::ClientReader<v1::FileChunk>* reader) {
    v1::FileChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
    refused += st.error_code() == grpc::StatusCode::FAILED_PRECONDITION ? 1 : 0;
  };
  v1::FetchFileRequest fetch_file;
  fetch_file.set_job_id(job_id);
  fetch_file.set_attempt(attempt);
  fetch_file.set_file_id(job->training_file());
  expect_refused(stub->FetchFile(context().get(), fetch_file).get());
  v1::FetchCheckpointFileRequest fetch_checkpoint;
  fetch_checkpoint.set_job_id(job_id);
  fetch_checkpoint.set_attempt(attempt);
  fetch_checkpoint.set_step(5);
  fetch_checkpoint.set_name("adapter_model.safetensors");
  expect_refused(stub->FetchCheckpointFile(context().get(), fetch_checkpoint).get());
  // Nothing of it was stored.
  for (const v1::JobEvent& e : AllEvents(c.client(), job_id)) {
    EXPECT_NE(e.message(), kLate);
  }
  auto after = c.client().GetJob(job_id);
  EXPECT_TRUE(after.ok()) << after.status();
  if (after.ok()) {
    EXPECT_NE(after->progress().steps_done(), kLateStep);
    for (const v1::ResultFile& f : after->result_files()) {
      EXPECT_NE(f.sha256(), Sha256Hex(kBytes));
    }
  }
  auto checkpoints = c.client().ListJobCheckpoints(job_id);
  EXPECT_TRUE(checkpoints.ok()) << checkpoints.status();
  if (checkpoints.ok()) {
    for (const v1::Checkpoint& cp : checkpoints->data()) {
      EXPECT_NE(cp.step_number(), kLateStep);
    }
  }
  return refused;
}

}  // namespace lathe::testing
