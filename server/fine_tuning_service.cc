#include <deque>
#include <optional>

#include "common/grpc_status.h"
#include "server/grpc_adapter.h"
#include "server/grpc_auth.h"
#include "server/services.h"

namespace lathe {

grpc::Status FineTuningService::CreateJob(grpc::ServerContext* context,
                                          const v1::CreateJobRequest* request,
                                          v1::Job* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->jobs.CreateJob(c, *request); },
      response);
}

grpc::Status FineTuningService::GetJob(grpc::ServerContext* context,
                                       const v1::GetJobRequest* request,
                                       v1::Job* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->jobs.GetJob(c, *request); },
      response);
}

grpc::Status FineTuningService::ListJobs(grpc::ServerContext* context,
                                         const v1::ListJobsRequest* request,
                                         v1::ListJobsResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->jobs.ListJobs(c, *request); },
      response);
}

grpc::Status FineTuningService::CancelJob(grpc::ServerContext* context,
                                          const v1::CancelJobRequest* request,
                                          v1::Job* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->jobs.CancelJob(c, *request); },
      response);
}

grpc::Status FineTuningService::ListJobEvents(
    grpc::ServerContext* context, const v1::ListJobEventsRequest* request,
    v1::ListJobEventsResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->jobs.ListJobEvents(c, *request);
      },
      response);
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
  static WatchJobReactor* Start(const ServiceDeps& deps,
                                const grpc::CallbackServerContext& context,
                                const v1::WatchJobRequest& request) {
    std::shared_ptr<WatchJobReactor> r(new WatchJobReactor());
    r->self_ = r;
    auto caller = UserOf(*deps.auth, context);
    auto follow = caller.ok() ? deps.ops->jobs.WatchJob(*caller, request, r)
                              : caller.status();
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
  return WatchJobReactor::Start(deps_, *context, *request);
}

grpc::Status FineTuningService::DownloadAdapter(
    grpc::ServerContext* context, const v1::DownloadAdapterRequest* request,
    grpc::ServerWriter<v1::DownloadChunk>* writer) {
  auto caller = UserOf(*deps_.auth, *context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto files = deps_.ops->jobs.DownloadAdapter(*caller, *request);
  if (!files.ok()) return ToGrpcStatus(files.status());
  return ToGrpcStatus(SendFiles(*files, deps_.chunk_bytes, writer));
}

grpc::Status FineTuningService::PauseJob(grpc::ServerContext* context,
                                         const v1::PauseJobRequest* request,
                                         v1::Job* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->jobs.PauseJob(c, *request); },
      response);
}

grpc::Status FineTuningService::ResumeJob(grpc::ServerContext* context,
                                          const v1::ResumeJobRequest* request,
                                          v1::Job* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->jobs.ResumeJob(c, *request); },
      response);
}

grpc::Status FineTuningService::ListJobCheckpoints(
    grpc::ServerContext* context, const v1::ListJobCheckpointsRequest* request,
    v1::ListJobCheckpointsResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) {
        return deps_.ops->jobs.ListJobCheckpoints(c, *request);
      },
      response);
}

grpc::Status FineTuningService::DownloadCheckpoint(
    grpc::ServerContext* context, const v1::DownloadCheckpointRequest* request,
    grpc::ServerWriter<v1::DownloadChunk>* writer) {
  auto caller = UserOf(*deps_.auth, *context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto files = deps_.ops->jobs.DownloadCheckpoint(*caller, *request);
  if (!files.ok()) return ToGrpcStatus(files.status());
  return ToGrpcStatus(SendFiles(*files, deps_.chunk_bytes, writer));
}

}  // namespace lathe
