#include <deque>
#include <optional>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/grpc_status.h"
#include "common/ids.h"
#include "common/job_state.h"
#include "common/status_macros.h"
#include "server/auth.h"
#include "server/job_request.h"
#include "server/request_limits.h"
#include "server/services.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

// The job with what it shows beyond its stored record: its queue position
// (Coordinator::FillQueuePosition).
absl::StatusOr<v1::Job> Presented(const ServerContext& ctx,
                                  absl::StatusOr<v1::Job> job) {
  if (job.ok()) RETURN_IF_ERROR(ctx.coordinator->FillQueuePosition(*job));
  return job;
}

absl::StatusOr<v1::Job> CreateJobImpl(const ServerContext& ctx,
                                      const Caller& caller,
                                      const v1::CreateJobRequest& r) {
  RETURN_IF_ERROR(CheckJobRequest(r));
  auto missing_model = [&] {
    return absl::NotFoundError(
        absl::StrCat("model: no model named \"", Echo(r.model()),
                     "\" (`lathe models list` shows them)"));
  };
  auto model = ctx.store->GetModel(r.model());
  if (!model.ok()) return missing_model();
  if (model->kind() != "base") {
    // Another project's fine-tuned model is as missing as one that never
    // existed.
    auto owner = ctx.store->GetJob(model->job_id());
    if (!owner.ok() || owner->project() != caller.project)
      return missing_model();
    return absl::InvalidArgumentError(absl::StrCat(
        "model: ", r.model(), " is a fine-tuned model; fine-tune its base, ",
        model->base_model()));
  }
  auto training = ctx.store->GetFile(r.training_file());
  if (!training.ok() || training->project() != caller.project) {
    return absl::NotFoundError(
        absl::StrCat("training_file: no such file ", Echo(r.training_file())));
  }
  thread_local absl::BitGen gen;
  v1::Job job = ResolveJob(r, *training, *model, caller.project, NewId("ftjob"),
                           absl::Uniform<int64_t>(gen, 0, 1LL << 31),
                           ctx.options.job_defaults);
  // Files are validated line by line at upload; the store checks in the
  // insert's own transaction that they still exist, so the job is written
  // straight into the queue with both events: no crash can leave it in
  // validating_files, which nothing would advance.
  job.set_status(v1::JOB_STATUS_QUEUED);
  // Idempotency keys are per project: one project cannot probe another's.
  std::string key =
      r.idempotency_key().empty()
          ? ""
          : absl::StrCat(caller.project, "/", r.idempotency_key());
  ASSIGN_OR_RETURN(
      auto created,
      ctx.store->CreateJob(job, key, RequestFingerprint(r),
                           ctx.options.max_jobs_in_flight_per_project));
  if (created.created) {
    spdlog::info("created {} on {} ({} examples)", job.id(), job.model(),
                 training->line_count());
  }
  RETURN_IF_ERROR(ctx.coordinator->FillQueuePosition(created.job));
  return created.job;
}

absl::StatusOr<v1::Job> CancelJobImpl(const ServerContext& ctx,
                                      const std::string& id) {
  // Retry the compare-and-set if the job moved between read and write.
  for (int i = 0; i < 5; ++i) {
    ASSIGN_OR_RETURN(v1::Job job, ctx.store->GetJob(id));
    store::TransitionUpdate u;
    absl::StatusOr<v1::Job> moved;
    switch (job.status()) {
      case v1::JOB_STATUS_VALIDATING_FILES:
      case v1::JOB_STATUS_QUEUED:
      case v1::JOB_STATUS_PAUSED:
        u.message = "The job was cancelled";
        moved = ctx.store->Transition(id, job.status(),
                                      v1::JOB_STATUS_CANCELLED, std::nullopt, u);
        break;
      case v1::JOB_STATUS_RUNNING:
        u.message = "Cancellation requested; stopping the worker";
        moved = ctx.store->Transition(id, job.status(),
                                      v1::JOB_STATUS_CANCELLING, std::nullopt, u);
        break;
      case v1::JOB_STATUS_CANCELLING:
        return job;
      default:
        return absl::FailedPreconditionError(absl::StrCat(
            "job ", id, " is already ", StatusName(job.status())));
    }
    if (moved.ok() || !absl::IsFailedPrecondition(moved.status())) return moved;
  }
  return absl::UnavailableError("the job kept changing state; retry");
}

}  // namespace

absl::StatusOr<v1::Job> FineTuningService::OwnedJob(
    const grpc::ServerContext* context, const std::string& job_id) const {
  ASSIGN_OR_RETURN(Caller caller, ctx_.auth->User(context));
  RETURN_IF_ERROR(CheckIdField("job_id", job_id));
  auto job = ctx_.store->GetJob(job_id);
  if (!job.ok()) return NotFoundAs("job", job_id, job.status());
  RETURN_IF_ERROR(CheckOwner(caller, job->project(), "job", job_id));
  RETURN_IF_ERROR(ctx_.coordinator->FillQueuePosition(*job));
  return job;
}

grpc::Status FineTuningService::CreateJob(grpc::ServerContext* context,
                                          const v1::CreateJobRequest* request,
                                          v1::Job* response) {
  auto caller = ctx_.auth->User(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto job = CreateJobImpl(ctx_, *caller, *request);
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::GetJob(grpc::ServerContext* context,
                                       const v1::GetJobRequest* request,
                                       v1::Job* response) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  *response = *std::move(owned);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::ListJobs(grpc::ServerContext* context,
                                         const v1::ListJobsRequest* request,
                                         v1::ListJobsResponse* response) {
  auto caller = ctx_.auth->User(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (request->limit() < 0 || request->limit() > 100) {
    return ToGrpcStatus(absl::InvalidArgumentError("limit: must be 1..100"));
  }
  if (!v1::JobStatus_IsValid(request->status())) {
    return ToGrpcStatus(absl::InvalidArgumentError("status: unknown value"));
  }
  std::map<std::string, std::string> metadata(request->metadata().begin(),
                                              request->metadata().end());
  if (auto st = CheckMetadata(metadata); !st.ok()) return ToGrpcStatus(st);
  if (auto st = CheckIdField("after", request->after(), /*required=*/false);
      !st.ok()) {
    return ToGrpcStatus(st);
  }
  auto page =
      ctx_.store->ListJobs(caller->project, request->limit(), request->after(),
                           request->status(), metadata);
  if (!page.ok()) return ToGrpcStatus(page.status());
  auto positions = ctx_.coordinator->QueuePositions(caller->project);
  if (!positions.ok()) return ToGrpcStatus(positions.status());
  for (auto& j : page->data) {
    if (auto it = positions->find(j.id()); it != positions->end()) {
      j.set_queue_position(it->second);
    }
    *response->add_data() = std::move(j);
  }
  response->set_has_more(page->has_more);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::CancelJob(grpc::ServerContext* context,
                                          const v1::CancelJobRequest* request,
                                          v1::Job* response) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  auto job = Presented(ctx_, CancelJobImpl(ctx_, request->job_id()));
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::ListJobEvents(
    grpc::ServerContext* context, const v1::ListJobEventsRequest* request,
    v1::ListJobEventsResponse* response) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  if (request->limit() < 0 || request->limit() > 1000) {
    return ToGrpcStatus(absl::InvalidArgumentError("limit: must be 1..1000"));
  }
  auto page = ctx_.store->ListEvents(request->job_id(), request->after(),
                                     request->limit());
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (auto& e : page->data) *response->add_data() = std::move(e);
  response->set_has_more(page->has_more);
  return grpc::Status::OK;
}

namespace {

// One WatchJob call on gRPC's callback API. The event feed's thread wakes it
// (new events, or a periodic check); it writes one update at a time and
// never blocks. Owned through shared_ptr: by itself until OnDone, and by the
// feed's thread while a Wake runs, so it is freed in OnDone or right after
// a Wake that was under way.
class WatchJobReactor final
    : public grpc::ServerWriteReactor<v1::WatchJobResponse>,
      public EventFeed::Subscriber {
 public:
  static WatchJobReactor* Start(EventFeed& feed,
                                const grpc::CallbackServerContext& context,
                                const v1::WatchJobRequest& request) {
    std::shared_ptr<WatchJobReactor> r(new WatchJobReactor());
    r->self_ = r;
    auto key = BearerToken(context);
    auto follow = key.ok()
                      ? feed.Open(*key, request.job_id(), request.after(), r)
                      : key.status();
    absl::MutexLock lock(&r->mu_);
    if (!follow.ok()) {
      r->finished_ = true;  // a later OnCancel finishes nothing
      r->Finish(ToGrpcStatus(follow.status()));  // unbound: only recorded
      return r.get();
    }
    r->follow_ = *std::move(follow);
    r->follow_->WakeIfNews();  // the first page
    return r.get();
  }

  void Wake() override {
    {
      absl::MutexLock lock(&mu_);
      if (follow_ == nullptr || end_) return;
      if (writing_ || !queue_.empty()) {
        // Still sending the last batch: the key and the age are checked now,
        // the events once it is sent.
        if (absl::Status st = follow_->Check(); !st.ok()) End(ToGrpcStatus(st));
      } else if (auto batch = follow_->Next(); !batch.ok()) {
        End(ToGrpcStatus(batch.status()));
      } else {
        for (auto& u : batch->updates) queue_.push_back(std::move(u));
        if (batch->finished) End(grpc::Status::OK);
      }
    }
    Send();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        End(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      }
    }
    Send();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
    Send();
  }

  void OnDone() override {
    // Destroyed in reverse: the lock, then `self` (this reactor is freed,
    // unless a Wake holds it), then `follow` (its wake-ups end).
    std::unique_ptr<EventFeed::Follow> follow;
    std::shared_ptr<WatchJobReactor> self;
    absl::MutexLock lock(&mu_);
    follow = std::move(follow_);
    self = std::move(self_);
  }

 private:
  WatchJobReactor() = default;

  // The stream ends with `status` once what is being written is sent; the
  // rest is dropped. The first ending counts.
  void End(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (end_) return;
    end_ = std::move(status);
    if (!end_->ok()) queue_.clear();
  }

  // Starts the next write, or the finish, unless a write is under way; with
  // nothing left to send, asks the feed for more if the job has news.
  void Send() ABSL_LOCKS_EXCLUDED(mu_) {
    const v1::WatchJobResponse* write = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || writing_) return;
      if (!queue_.empty()) {
        sending_ = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
        write = &sending_;
      } else if (end_) {
        finished_ = true;
        finish = *end_;
      } else if (follow_ != nullptr) {
        follow_->WakeIfNews();
      }
    }
    // gRPC's calls outside the lock: they may run reactions inline.
    if (write != nullptr) StartWrite(write);
    if (finish) Finish(*std::move(finish));
  }

  absl::Mutex mu_;
  std::shared_ptr<WatchJobReactor> self_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<EventFeed::Follow> follow_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::WatchJobResponse> queue_ ABSL_GUARDED_BY(mu_);
  v1::WatchJobResponse sending_ ABSL_GUARDED_BY(mu_);  // until OnWriteDone
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish called
};

}  // namespace

grpc::ServerWriteReactor<v1::WatchJobResponse>* FineTuningService::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  return WatchJobReactor::Start(*ctx_.feed, *context, *request);
}

grpc::Status FineTuningService::DownloadAdapter(
    grpc::ServerContext* context, const v1::DownloadAdapterRequest* request,
    grpc::ServerWriter<v1::DownloadChunk>* writer) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  auto job = ctx_.store->GetJob(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (job->result_files().empty()) {
    return ToGrpcStatus(absl::FailedPreconditionError(absl::StrCat(
        "job ", job->id(), " has no adapter yet (status ",
        StatusName(job->status()), ")")));
  }
  return ToGrpcStatus(SendFiles(ctx_, job->result_files(), writer));
}

grpc::Status FineTuningService::PauseJob(grpc::ServerContext* context,
                                         const v1::PauseJobRequest* request,
                                         v1::Job* response) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  auto job = Presented(ctx_, ctx_.coordinator->PauseJob(request->job_id()));
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::ResumeJob(grpc::ServerContext* context,
                                          const v1::ResumeJobRequest* request,
                                          v1::Job* response) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  auto job = Presented(ctx_, ctx_.coordinator->ResumeJob(request->job_id()));
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::ListJobCheckpoints(
    grpc::ServerContext* context, const v1::ListJobCheckpointsRequest* request,
    v1::ListJobCheckpointsResponse* response) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  auto all = ctx_.store->ListCheckpoints(request->job_id());
  if (!all.ok()) return ToGrpcStatus(all.status());
  for (auto& c : *all) *response->add_data() = std::move(c);
  return grpc::Status::OK;
}

grpc::Status FineTuningService::DownloadCheckpoint(
    grpc::ServerContext* context, const v1::DownloadCheckpointRequest* request,
    grpc::ServerWriter<v1::DownloadChunk>* writer) {
  auto owned = OwnedJob(context, request->job_id());
  if (!owned.ok()) return ToGrpcStatus(owned.status());
  auto all = ctx_.store->ListCheckpoints(request->job_id());
  if (!all.ok()) return ToGrpcStatus(all.status());
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    if (request->step_number() == 0 || it->step_number() == request->step_number()) {
      return ToGrpcStatus(SendFiles(ctx_, it->files(), writer));
    }
  }
  return ToGrpcStatus(absl::NotFoundError(
      request->step_number() == 0
          ? absl::StrCat("job ", request->job_id(), " has no checkpoint yet")
          : absl::StrCat("step_number: job ", request->job_id(),
                         " has no checkpoint at step ", request->step_number())));
}

absl::Status SendFiles(const ServerContext& ctx,
                       const google::protobuf::RepeatedPtrField<v1::ResultFile>& files,
                       grpc::ServerWriter<v1::DownloadChunk>* writer) {
  for (const v1::ResultFile& f : files) {
    v1::DownloadChunk head;
    *head.mutable_file() = f;
    if (!writer->Write(head)) return absl::CancelledError("the client went away");
    RETURN_IF_ERROR(StreamFileTo(ctx, ctx.blobs->PathFor(f.sha256()), writer));
  }
  return absl::OkStatus();
}

}  // namespace lathe
