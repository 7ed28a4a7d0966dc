#include "client/client.h"

#include <filesystem>
#include <fstream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;

constexpr absl::Duration kUnaryDeadline = absl::Seconds(30);

}  // namespace

void Client::Decorate(grpc::ClientContext& ctx) const {
  if (!api_key_.empty()) ctx.AddMetadata("authorization", "Bearer " + api_key_);
}

template <typename Response, typename Call>
absl::StatusOr<Response> Client::Unary(Call call) const {
  grpc::ClientContext ctx;
  Decorate(ctx);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kUnaryDeadline));
  Response resp;
  grpc::Status st = call(&ctx, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp;
}

grpc::ChannelArguments Client::ChannelArgs() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  // WatchJob re-attaches within seconds of a lathed restart.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  return args;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        const std::string& api_key,
                                                        const ChannelTls& tls) {
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   MakeChannel(target, tls, ChannelArgs()));
  return std::make_unique<Client>(std::move(channel), api_key);
}

Client::Client(std::shared_ptr<grpc::Channel> channel, const std::string& api_key)
    : api_key_(api_key), channel_(std::move(channel)) {
  files_ = v1::Files::NewStub(channel_);
  jobs_ = v1::FineTuning::NewStub(channel_);
  models_ = v1::Models::NewStub(channel_);
  admin_ = v1::Admin::NewStub(channel_);
  webhooks_ = v1::Webhooks::NewStub(channel_);
}

absl::StatusOr<v1::ApiKey> Client::CreateApiKey(const v1::CreateApiKeyRequest& r) {
  return Unary<v1::ApiKey>([&](grpc::ClientContext* c, v1::ApiKey* out) {
    return admin_->CreateApiKey(c, r, out);
  });
}

absl::StatusOr<v1::ListApiKeysResponse> Client::ListApiKeys(
    const std::string& project) {
  v1::ListApiKeysRequest r;
  r.set_project(project);
  return Unary<v1::ListApiKeysResponse>(
      [&](grpc::ClientContext* c, v1::ListApiKeysResponse* out) {
        return admin_->ListApiKeys(c, r, out);
      });
}

absl::StatusOr<v1::ApiKey> Client::RevokeApiKey(const std::string& key_id) {
  v1::RevokeApiKeyRequest r;
  r.set_key_id(key_id);
  return Unary<v1::ApiKey>([&](grpc::ClientContext* c, v1::ApiKey* out) {
    return admin_->RevokeApiKey(c, r, out);
  });
}

absl::StatusOr<v1::File> Client::UploadFile(const std::string& path,
                                            const std::string& purpose,
                                            const Progress& progress) {
  std::error_code ec;
  int64_t total = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": ", ec.message()));
  ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));

  grpc::ClientContext ctx;
  Decorate(ctx);
  v1::File file;
  auto writer = files_->Upload(&ctx, &file);
  v1::UploadFileRequest msg;
  auto* h = msg.mutable_header();
  h->set_filename(fs::path(path).filename().string());
  h->set_purpose(purpose);
  h->set_bytes(total);
  h->set_sha256(sha);
  bool open = writer->Write(msg);
  std::string buf(1 << 20, '\0');
  int64_t done = 0;
  while (open && in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    v1::UploadFileRequest chunk;
    chunk.set_chunk(buf.data(), static_cast<size_t>(n));
    open = writer->Write(chunk);
    done += n;
    if (progress) progress(done, total);
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return file;
}

absl::StatusOr<v1::File> Client::GetFile(const std::string& file_id) {
  v1::GetFileRequest r;
  r.set_file_id(file_id);
  return Unary<v1::File>([&](grpc::ClientContext* c, v1::File* out) {
    return files_->GetFile(c, r, out);
  });
}

absl::StatusOr<v1::ListFilesResponse> Client::ListFiles(
    const v1::ListFilesRequest& r) {
  return Unary<v1::ListFilesResponse>(
      [&](grpc::ClientContext* c, v1::ListFilesResponse* out) {
        return files_->ListFiles(c, r, out);
      });
}

absl::StatusOr<v1::Job> Client::CreateJob(const v1::CreateJobRequest& r) {
  return Unary<v1::Job>([&](grpc::ClientContext* c, v1::Job* out) {
    return jobs_->CreateJob(c, r, out);
  });
}

absl::StatusOr<v1::Job> Client::GetJob(const std::string& job_id) {
  v1::GetJobRequest r;
  r.set_job_id(job_id);
  return Unary<v1::Job>([&](grpc::ClientContext* c, v1::Job* out) {
    return jobs_->GetJob(c, r, out);
  });
}

absl::StatusOr<v1::ListJobsResponse> Client::ListJobs(
    const v1::ListJobsRequest& r) {
  return Unary<v1::ListJobsResponse>(
      [&](grpc::ClientContext* c, v1::ListJobsResponse* out) {
        return jobs_->ListJobs(c, r, out);
      });
}

absl::StatusOr<v1::Job> Client::CancelJob(const std::string& job_id) {
  v1::CancelJobRequest r;
  r.set_job_id(job_id);
  return Unary<v1::Job>([&](grpc::ClientContext* c, v1::Job* out) {
    return jobs_->CancelJob(c, r, out);
  });
}

absl::StatusOr<v1::ListJobEventsResponse> Client::ListJobEvents(
    const v1::ListJobEventsRequest& r) {
  return Unary<v1::ListJobEventsResponse>(
      [&](grpc::ClientContext* c, v1::ListJobEventsResponse* out) {
        return jobs_->ListJobEvents(c, r, out);
      });
}

absl::StatusOr<v1::Model> Client::RegisterModel(const std::string& name,
                                                const std::string& path) {
  v1::RegisterModelRequest r;
  r.set_name(name);
  r.set_path(path);
  // Registration hashes every file of the model: allow for large folders.
  grpc::ClientContext ctx;
  Decorate(ctx);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(30)));
  v1::Model out;
  grpc::Status st = models_->RegisterModel(&ctx, r, &out);
  if (!st.ok()) return FromGrpcStatus(st);
  return out;
}

absl::StatusOr<v1::Model> Client::GetModel(const std::string& model_id) {
  v1::GetModelRequest r;
  r.set_model_id(model_id);
  return Unary<v1::Model>([&](grpc::ClientContext* c, v1::Model* out) {
    return models_->GetModel(c, r, out);
  });
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels() {
  return Unary<v1::ListModelsResponse>(
      [&](grpc::ClientContext* c, v1::ListModelsResponse* out) {
        return models_->ListModels(c, v1::ListModelsRequest(), out);
      });
}

absl::Status Client::DeleteModel(const std::string& model_id) {
  v1::DeleteModelRequest r;
  r.set_model_id(model_id);
  return Unary<v1::DeleteModelResponse>(
             [&](grpc::ClientContext* c, v1::DeleteModelResponse* out) {
               return models_->DeleteModel(c, r, out);
             })
      .status();
}

absl::StatusOr<v1::Webhook> Client::CreateWebhook(
    const v1::CreateWebhookRequest& r) {
  return Unary<v1::Webhook>([&](grpc::ClientContext* c, v1::Webhook* out) {
    return webhooks_->CreateWebhook(c, r, out);
  });
}

absl::StatusOr<v1::ListWebhooksResponse> Client::ListWebhooks(
    const v1::ListWebhooksRequest& r) {
  return Unary<v1::ListWebhooksResponse>(
      [&](grpc::ClientContext* c, v1::ListWebhooksResponse* out) {
        return webhooks_->ListWebhooks(c, r, out);
      });
}

absl::Status Client::DeleteWebhook(const std::string& webhook_id) {
  v1::DeleteWebhookRequest r;
  r.set_webhook_id(webhook_id);
  return Unary<v1::DeleteWebhookResponse>(
             [&](grpc::ClientContext* c, v1::DeleteWebhookResponse* out) {
               return webhooks_->DeleteWebhook(c, r, out);
             })
      .status();
}

absl::StatusOr<v1::ListWebhookDeliveriesResponse> Client::ListWebhookDeliveries(
    const v1::ListWebhookDeliveriesRequest& r) {
  return Unary<v1::ListWebhookDeliveriesResponse>(
      [&](grpc::ClientContext* c, v1::ListWebhookDeliveriesResponse* out) {
        return webhooks_->ListWebhookDeliveries(c, r, out);
      });
}

absl::Status Client::WatchJob(
    const std::string& job_id, const std::string& after,
    const std::function<void(const v1::WatchJobResponse&)>& on_update,
    absl::Time deadline) {
  std::string cursor = after;
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext ctx;
    Decorate(ctx);
    if (deadline != absl::InfiniteFuture()) {
      ctx.set_deadline(absl::ToChronoTime(deadline));
    }
    v1::WatchJobRequest r;
    r.set_job_id(job_id);
    r.set_after(cursor);
    auto reader = jobs_->WatchJob(&ctx, r);
    v1::WatchJobResponse resp;
    while (reader->Read(&resp)) {
      cursor = resp.event().id();
      on_update(resp);
      backoff = absl::Milliseconds(200);
    }
    grpc::Status st = reader->Finish();
    if (st.ok()) return absl::OkStatus();
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE ||
        absl::Now() + backoff >= deadline) {
      return FromGrpcStatus(st);
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

namespace {

// Receives the header-then-bytes stream of DownloadAdapter/DownloadCheckpoint
// into `out_dir`: each file's size and SHA-256 checked, then renamed into
// place.
absl::StatusOr<std::vector<std::string>> ReceiveFiles(
    grpc::ClientReader<v1::DownloadChunk>* reader, const std::string& out_dir,
    const Client::Progress& progress) {
  std::error_code ec;
  std::vector<std::string> written;
  v1::ResultFile current;
  std::ofstream out;
  std::string tmp_path;
  std::unique_ptr<Sha256> hash;
  int64_t got = 0, done = 0, total = 0;

  auto finish = [&]() -> absl::Status {
    if (!hash) return absl::OkStatus();
    out.close();
    std::string sha = hash->HexDigest();
    hash.reset();
    if (got != current.bytes() || sha != current.sha256()) {
      fs::remove(tmp_path, ec);
      return absl::DataLossError(absl::StrCat(
          current.name(), ": received ", got, " bytes with SHA-256 ", sha,
          ", expected ", current.bytes(), " bytes with ", current.sha256()));
    }
    std::string final_path = (fs::path(out_dir) / current.name()).string();
    fs::rename(tmp_path, final_path, ec);
    if (ec) return absl::InternalError(absl::StrCat(final_path, ": ", ec.message()));
    written.push_back(final_path);
    return absl::OkStatus();
  };

  v1::DownloadChunk chunk;
  absl::Status st;
  while (st.ok() && reader->Read(&chunk)) {
    if (chunk.has_file()) {
      st = finish();
      current = chunk.file();
      const std::string& name = current.name();
      if (name.empty() || name.find('/') != std::string::npos || name == "." ||
          name == "..") {
        st = absl::DataLossError(absl::StrCat("server sent a bad file name: ", name));
        break;
      }
      total += current.bytes();
      tmp_path = (fs::path(out_dir) / (name + ".part")).string();
      out.open(tmp_path, std::ios::binary | std::ios::trunc);
      if (!out) st = absl::InternalError(absl::StrCat("cannot write ", tmp_path));
      hash = std::make_unique<Sha256>();
      got = 0;
    } else if (hash) {
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
      hash->Update(chunk.data());
      got += static_cast<int64_t>(chunk.data().size());
      done += static_cast<int64_t>(chunk.data().size());
      if (progress) progress(done, total);
    }
  }
  grpc::Status rpc = reader->Finish();
  if (st.ok() && !rpc.ok()) st = FromGrpcStatus(rpc);
  if (st.ok()) st = finish();
  if (!st.ok()) {
    if (hash) fs::remove(tmp_path, ec);
    return st;
  }
  return written;
}

absl::Status MakeOutDir(const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out ", out_dir, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> Client::DownloadAdapter(
    const std::string& job_id, const std::string& out_dir,
    const Progress& progress) {
  RETURN_IF_ERROR(MakeOutDir(out_dir));
  grpc::ClientContext ctx;
  Decorate(ctx);
  v1::DownloadAdapterRequest r;
  r.set_job_id(job_id);
  auto reader = jobs_->DownloadAdapter(&ctx, r);
  return ReceiveFiles(reader.get(), out_dir, progress);
}

absl::StatusOr<std::vector<std::string>> Client::DownloadCheckpoint(
    const std::string& job_id, int64_t step, const std::string& out_dir,
    const Progress& progress) {
  RETURN_IF_ERROR(MakeOutDir(out_dir));
  grpc::ClientContext ctx;
  Decorate(ctx);
  v1::DownloadCheckpointRequest r;
  r.set_job_id(job_id);
  r.set_step_number(step);
  auto reader = jobs_->DownloadCheckpoint(&ctx, r);
  return ReceiveFiles(reader.get(), out_dir, progress);
}

absl::Status Client::DeleteFile(const std::string& file_id) {
  v1::DeleteFileRequest r;
  r.set_file_id(file_id);
  return Unary<v1::DeleteFileResponse>(
             [&](grpc::ClientContext* c, v1::DeleteFileResponse* out) {
               return files_->DeleteFile(c, r, out);
             })
      .status();
}

absl::Status Client::DownloadFile(const std::string& file_id,
                                  const std::string& path,
                                  const Progress& progress) {
  ASSIGN_OR_RETURN(v1::File file, GetFile(file_id));
  grpc::ClientContext ctx;
  Decorate(ctx);
  v1::DownloadFileRequest r;
  r.set_file_id(file_id);
  auto reader = files_->DownloadFile(&ctx, r);
  std::string tmp = path + ".part";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", tmp));
  Sha256 hash;
  int64_t done = 0;
  v1::FileContent chunk;
  while (reader->Read(&chunk)) {
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    hash.Update(chunk.data());
    done += static_cast<int64_t>(chunk.data().size());
    if (progress) progress(done, file.bytes());
  }
  out.close();
  grpc::Status st = reader->Finish();
  std::error_code ec;
  std::string sha = hash.HexDigest();
  if (!st.ok() || sha != file.sha256()) {
    fs::remove(tmp, ec);
    if (!st.ok()) return FromGrpcStatus(st);
    return absl::DataLossError(absl::StrCat("received SHA-256 ", sha, ", expected ",
                                            file.sha256()));
  }
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> Client::PauseJob(const std::string& job_id) {
  v1::PauseJobRequest r;
  r.set_job_id(job_id);
  return Unary<v1::Job>([&](grpc::ClientContext* c, v1::Job* out) {
    return jobs_->PauseJob(c, r, out);
  });
}

absl::StatusOr<v1::Job> Client::ResumeJob(const std::string& job_id) {
  v1::ResumeJobRequest r;
  r.set_job_id(job_id);
  return Unary<v1::Job>([&](grpc::ClientContext* c, v1::Job* out) {
    return jobs_->ResumeJob(c, r, out);
  });
}

absl::StatusOr<v1::ListJobCheckpointsResponse> Client::ListJobCheckpoints(
    const std::string& job_id) {
  v1::ListJobCheckpointsRequest r;
  r.set_job_id(job_id);
  return Unary<v1::ListJobCheckpointsResponse>(
      [&](grpc::ClientContext* c, v1::ListJobCheckpointsResponse* out) {
        return jobs_->ListJobCheckpoints(c, r, out);
      });
}

}  // namespace lathe
