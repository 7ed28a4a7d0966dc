// The FineTuning operations: create, read, cancel, pause and resume jobs,
// follow their events, list and download checkpoints and the adapter.
// Each takes the authenticated caller and the API's request and answers
// with the API's response; a job of another project is NOT_FOUND, worded
// as for a missing one.
//
// Thread-safe (what it borrows is).
#ifndef LATHE_SERVER_OPERATIONS_JOB_OPS_H_
#define LATHE_SERVER_OPERATIONS_JOB_OPS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "server/auth.h"
#include "server/event_feed.h"
#include "server/operations/deps.h"
#include "server/operations/download.h"

namespace lathe {

class JobOps {
 public:
  // What `deps` points to must outlive this.
  explicit JobOps(const OperationDeps& deps) : deps_(deps) {}

  // Checks, resolves and stores the job, queued. INVALID_ARGUMENT (a field),
  // NOT_FOUND (model, training_file), ALREADY_EXISTS (idempotency key sent
  // with another request), RESOURCE_EXHAUSTED
  // (max_jobs_in_flight_per_project).
  absl::StatusOr<v1::Job> CreateJob(const Caller& caller,
                                    const v1::CreateJobRequest& request) const;
  // With its queue position.
  absl::StatusOr<v1::Job> GetJob(const Caller& caller,
                                 const v1::GetJobRequest& request) const;
  // INVALID_ARGUMENT for a bad limit, status, metadata filter or cursor.
  absl::StatusOr<v1::ListJobsResponse> ListJobs(
      const Caller& caller, const v1::ListJobsRequest& request) const;
  // FAILED_PRECONDITION once the job has finished.
  absl::StatusOr<v1::Job> CancelJob(const Caller& caller,
                                    const v1::CancelJobRequest& request) const;
  // Coordinator::PauseJob and ResumeJob.
  absl::StatusOr<v1::Job> PauseJob(const Caller& caller,
                                   const v1::PauseJobRequest& request) const;
  absl::StatusOr<v1::Job> ResumeJob(const Caller& caller,
                                    const v1::ResumeJobRequest& request) const;
  absl::StatusOr<v1::ListJobEventsResponse> ListJobEvents(
      const Caller& caller, const v1::ListJobEventsRequest& request) const;
  absl::StatusOr<v1::ListJobCheckpointsResponse> ListJobCheckpoints(
      const Caller& caller, const v1::ListJobCheckpointsRequest& request) const;

  // Following a job (EventFeed::Open), for transports that stream: the
  // follow wakes `subscriber` when the job has news.
  absl::StatusOr<std::unique_ptr<EventFeed::Follow>> WatchJob(
      const Caller& caller, const v1::WatchJobRequest& request,
      std::weak_ptr<EventFeed::Subscriber> subscriber) const;
  // The updates after `request.after()`, waiting until `deadline` for at
  // least one, for transports that poll: empty (and not finished) when
  // none came by then. Errors as WatchJob and EventFeed::Follow::Next.
  absl::StatusOr<EventFeed::Follow::Batch> NextJobEvents(
      const Caller& caller, const v1::WatchJobRequest& request,
      absl::Time deadline) const;

  // The adapter's files. FAILED_PRECONDITION until the job has one.
  absl::StatusOr<std::vector<Download>> DownloadAdapter(
      const Caller& caller, const v1::DownloadAdapterRequest& request) const;
  // The files of the checkpoint at `step_number` (0: the latest).
  // NOT_FOUND when there is none.
  absl::StatusOr<std::vector<Download>> DownloadCheckpoint(
      const Caller& caller, const v1::DownloadCheckpointRequest& request) const;

 private:
  // `job_id`, which must be the caller's project's (else NOT_FOUND, as for
  // a missing job); its queue position is not filled.
  absl::StatusOr<v1::Job> OwnedJob(const Caller& caller,
                                   const std::string& job_id) const;
  // `job` with what it shows beyond its record: its queue position.
  absl::StatusOr<v1::Job> Presented(absl::StatusOr<v1::Job> job) const;
  // Resolves request `r` (checked, its files and inputs found) into a job
  // and writes it straight into the queue.
  absl::StatusOr<v1::Job> Enqueue(const Caller& caller,
                                  const v1::CreateJobRequest& r,
                                  const v1::File& training,
                                  const v1::Model& model) const;
  std::vector<Download> DownloadsOf(
      const google::protobuf::RepeatedPtrField<v1::ResultFile>& files) const;

  const OperationDeps deps_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_JOB_OPS_H_
