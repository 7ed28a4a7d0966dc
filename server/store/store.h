// The control plane's durable state: files, jobs, events, result files,
// base models and webhooks with their deliveries (an outbox) in one SQLite
// database (WAL, synchronous=FULL). Speaks the API's protos; knows nothing
// of gRPC.
//
// Thread-safe: one connection guarded by a mutex; every write runs in a
// BEGIN IMMEDIATE transaction. Job status changes are compare-and-set
// (UPDATE … WHERE status = from) and record an event in the same
// transaction.
#ifndef LATHE_SERVER_STORE_STORE_H_
#define LATHE_SERVER_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lathe/v1/admin.pb.h"
#include "lathe/v1/files.pb.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "lathe/v1/models.pb.h"
#include "lathe/v1/webhooks.pb.h"
#include "server/store/database.h"

namespace lathe::store {

template <typename T>
struct Page {
  std::vector<T> data;
  bool has_more = false;
};

// What a status change writes besides the status itself.
struct TransitionUpdate {
  std::optional<int32_t> attempt;           // new attempt number
  std::optional<std::string> worker_id;
  std::optional<v1::JobError> error;
  std::optional<std::string> fine_tuned_model;
  std::optional<int64_t> trained_tokens;
  std::optional<v1::JobReport> report;   // succeeded: the after-job reports
  std::optional<int64_t> not_before_ms;  // queued: not placed before
  bool count_failure = false;  // the attempt failed (failed_attempts + 1)
  std::string message;         // the event's text
  std::string level = "info";
};

class Store {
 public:
  // Opens the database and applies migrations (PRAGMA user_version).
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);

  // Files (each of a project). InsertFile: ALREADY_EXISTS on a duplicate
  // id. ListFiles: the project's files only.
  absl::Status InsertFile(const v1::File& file);
  absl::StatusOr<v1::File> GetFile(const std::string& id);
  // Newest first; `after` is the last id of the previous page.
  // INVALID_ARGUMENT for an unknown cursor.
  absl::StatusOr<Page<v1::File>> ListFiles(const std::string& project,
                                           int limit, const std::string& after,
                                           const std::string& purpose);

  // Deletes a file record. FAILED_PRECONDITION while a job that has not
  // finished uses it; NOT_FOUND if absent. Returns true when no other
  // record (BlobReferenced) shares its content, so the caller may delete
  // the blob.
  absl::StatusOr<bool> DeleteFile(const std::string& id);

  // API keys: only the secret's SHA-256 is stored. FindApiKey: NOT_FOUND
  // for an unknown secret (a revoked key is returned with revoked_at set).
  absl::Status InsertApiKey(const v1::ApiKey& key,
                            const std::string& secret_sha256);
  absl::StatusOr<v1::ApiKey> FindApiKey(const std::string& secret_sha256);
  // The key with id `id`; NOT_FOUND if absent.
  absl::StatusOr<v1::ApiKey> GetApiKey(const std::string& id);
  absl::StatusOr<std::vector<v1::ApiKey>> ListApiKeys(const std::string& project);
  // Revoking twice keeps the first time. NOT_FOUND if absent.
  absl::StatusOr<v1::ApiKey> RevokeApiKey(const std::string& id);

  // Checkpoints: each file is recorded as it is uploaded; the checkpoint
  // exists once RecordCheckpoint finds all its files from that attempt
  // (FAILED_PRECONDITION otherwise). Recording twice is harmless; a file of
  // a recorded checkpoint is never replaced (PutCheckpointFile:
  // FAILED_PRECONDITION, or OK when the same name and sha256 is sent again).
  absl::Status PutCheckpointFile(const std::string& job_id, int64_t step,
                                 int32_t attempt, const v1::ResultFile& file);
  absl::Status RecordCheckpoint(const std::string& job_id, int64_t step,
                                int32_t attempt,
                                const std::vector<std::string>& files,
                                const v1::CheckpointMetrics& metrics);
  // Oldest first. NOT_FOUND if the job does not exist.
  absl::StatusOr<std::vector<v1::Checkpoint>> ListCheckpoints(
      const std::string& job_id);

  // Base models (id = name). Registering a name again with the same path
  // refreshes its record; another path is ALREADY_EXISTS.
  absl::StatusOr<v1::Model> RegisterModel(const v1::Model& model);
  // A base model by name or a fine-tuned model by its "ft:…" id.
  absl::StatusOr<v1::Model> GetModel(const std::string& id);
  // Base models by name, then `project`'s fine-tuned models newest first.
  absl::StatusOr<std::vector<v1::Model>> ListModels(const std::string& project);
  // Deletes job `job_id`'s fine-tuned model: the job keeps its record and
  // checkpoints, without fine_tuned_model and result files, in one
  // transaction. Returns the SHA-256 of each result file removed (their
  // blobs may go once unreferenced). NOT_FOUND when it has no model.
  absl::StatusOr<std::vector<std::string>> DeleteFineTunedModel(
      const std::string& job_id);

  // What /metrics reads off the database at a scrape.
  struct Stats {
    // (project, status) -> jobs.
    std::map<std::pair<std::string, v1::JobStatus>, int64_t> jobs;
    int64_t blob_bytes = 0;  // distinct blobs the records name
  };
  absl::StatusOr<Stats> ReadStats();
  // The newest metrics event of `job_id` among its last `window` events
  // (nullopt when none).
  absl::StatusOr<std::optional<v1::Metrics>> LatestMetrics(
      const std::string& job_id, int window = 64);
  // Each commit's duration (Database::SetCommitObserver).
  void SetCommitObserver(std::function<void(double seconds)> observer);

  // Inserts a job (status taken from `job`: validating_files, or queued
  // with both events in the one transaction), after checking in that
  // transaction that its training and validation files exist in its
  // project (NOT_FOUND naming the field otherwise). With a non-empty
  // `idempotency_key`: if a job with that key exists and its
  // `request_fingerprint` matches, returns that job (created = false); if it
  // differs, ALREADY_EXISTS. With `max_in_flight` > 0, RESOURCE_EXHAUSTED
  // when the job's project already has that many unfinished jobs (checked
  // in the insert's transaction, so concurrent creates cannot overshoot).
  struct Created {
    v1::Job job;
    bool created = true;
  };
  absl::StatusOr<Created> CreateJob(const v1::Job& job,
                                    const std::string& idempotency_key,
                                    const std::string& request_fingerprint,
                                    int max_in_flight = 0);
  // NOT_FOUND if absent. queue_position is left 0: it is the scheduler's
  // (Coordinator::QueuePositions).
  absl::StatusOr<v1::Job> GetJob(const std::string& id);
  // Newest first; `status` 0 = any; every `metadata` pair must match.
  absl::StatusOr<Page<v1::Job>> ListJobs(
      const std::string& project, int limit, const std::string& after,
      v1::JobStatus status,
      const std::map<std::string, std::string>& metadata = {});
  // The scheduler's input: queued jobs and the running ones per project.
  struct QueueEntry {
    std::string job_id;
    int64_t seq = 0;            // creation order
    int64_t not_before_ms = 0;  // retry backoff
    std::string project;
    v1::JobPriority priority = v1::JOB_PRIORITY_NORMAL;
    int64_t memory_bytes = 0;   // each worker's
    int64_t created_at = 0;     // Unix seconds
    int devices = 1;            // workers it runs on at once
    // Of memory_bytes, what another LoRA job of base_sha256 on the same
    // worker holds already (Job.shared_memory_bytes).
    int64_t shared_memory_bytes = 0;
    std::string base_sha256;
  };
  struct SchedulerInput {
    std::vector<QueueEntry> queued;  // oldest first
    // Running (or cancelling) jobs per project, a gang counting each of its
    // workers: the fair-share input.
    std::map<std::string, int> running_per_project;
  };
  // Both read under one lock, so that they agree with each other.
  absl::StatusOr<SchedulerInput> ReadSchedulerInput();
  // Jobs in `status`, e.g. running ones at start-up.
  absl::StatusOr<std::vector<v1::Job>> JobsInStatus(v1::JobStatus status);

  // Compare-and-set: moves job `id` from `from` to `to` if it is in `from`
  // (and, when `expect_attempt` is set, on that attempt). Records a status
  // event. FAILED_PRECONDITION if the job is elsewhere or the transition is
  // not allowed; NOT_FOUND if there is no such job.
  absl::StatusOr<v1::Job> Transition(const std::string& id, v1::JobStatus from,
                                     v1::JobStatus to,
                                     std::optional<int32_t> expect_attempt,
                                     const TransitionUpdate& update);
  // Sets or clears the resume request of job `id`, paused on `attempt`
  // (recording `message` as an event when it changes). Any move out of
  // `paused` clears it. FAILED_PRECONDITION unless the job is paused on
  // that attempt.
  absl::StatusOr<v1::Job> SetResumeRequested(const std::string& id,
                                             int32_t attempt, bool requested,
                                             const std::string& message);
  // What one report of a running attempt writes: all of it in one
  // transaction (one fsync), so a report is recorded whole or not at all.
  struct AttemptEvent {
    int64_t seq = 0;  // the attempt's own numbering, from 1
    v1::JobEvent event;
  };
  struct AttemptReport {
    std::string job_id;
    int32_t attempt = 0;
    // Each (job, attempt, seq) is stored once: a repeated one is skipped.
    std::vector<AttemptEvent> events;
    // Progress; ignored unless `attempt` is the job's current one.
    int64_t steps_done = 0;
    int64_t steps_total = 0;
    int64_t trained_tokens = 0;
    // Each recorded as RecordCheckpoint does; one whose files are not all
    // uploaded from this attempt is a warning event instead (repeating the
    // report cannot help).
    struct Checkpoint {
      int64_t step = 0;
      std::vector<std::string> files;
      v1::CheckpointMetrics metrics;
    };
    std::vector<Checkpoint> checkpoints;
    // Then the server's own events, then a status change: a
    // compare-and-set as Transition, on `attempt`.
    std::vector<v1::JobEvent> notes;
    struct StatusChange {
      v1::JobStatus from = v1::JOB_STATUS_UNSPECIFIED;
      v1::JobStatus to = v1::JOB_STATUS_UNSPECIFIED;
      TransitionUpdate update;
    };
    std::optional<StatusChange> status_change;
  };
  // FAILED_PRECONDITION, with nothing written, when the status change's
  // compare-and-set finds the job elsewhere.
  absl::Status RecordAttemptReport(const AttemptReport& report);
  // Appends an event. With attempt > 0, (job, attempt, attempt_seq) is
  // unique: re-sent events are ignored. Returns the event as stored.
  absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& job_id,
                                           const v1::JobEvent& event,
                                           int32_t attempt,
                                           int64_t attempt_seq);
  // Oldest first, after the cursor (an event id of this job, "" = from the
  // start). NOT_FOUND if the job does not exist; INVALID_ARGUMENT, naming
  // `after`, for a cursor that is not one of this job's event ids (malformed
  // or another job's alike).
  absl::StatusOr<Page<v1::JobEvent>> ListEvents(const std::string& job_id,
                                                const std::string& after,
                                                int limit);
  // `listener(job_id)` is called for every event written, from inside the
  // writing transaction with the store's lock held: a reader it wakes takes
  // that lock, so it sees the event once committed (or nothing, if the
  // write rolled back). The listener must return quickly and must not call
  // into the store. Empty: none.
  void SetEventListener(
      std::function<void(const std::string& job_id)> listener);

  // Webhooks (each of a project). InsertWebhook: RESOURCE_EXHAUSTED when
  // the project already has `max_per_project` (checked in the insert's
  // transaction). GetWebhook returns the secret, ListWebhooks (newest
  // first; INVALID_ARGUMENT for an unknown cursor) never does.
  absl::Status InsertWebhook(const v1::Webhook& webhook, int max_per_project);
  absl::StatusOr<v1::Webhook> GetWebhook(const std::string& id);
  absl::StatusOr<Page<v1::Webhook>> ListWebhooks(const std::string& project,
                                                 int limit,
                                                 const std::string& after);
  // Deletes the webhook and all its deliveries. NOT_FOUND if absent.
  absl::Status DeleteWebhook(const std::string& id);

  // Webhook deliveries: the outbox. Every event recorded (by any method
  // above) that a webhook of the job's project subscribes to
  // (WebhookEventTypeOf) queues one pending delivery per such webhook in
  // the event's own transaction, due at once: a state change is never
  // recorded without its deliveries, nor a delivery without its event.
  //
  // Newest first; `after` is a delivery id of this webhook
  // (INVALID_ARGUMENT otherwise).
  absl::StatusOr<Page<v1::WebhookDelivery>> ListWebhookDeliveries(
      const std::string& webhook_id, int limit, const std::string& after);
  // Pending deliveries due at `now_ms` (Unix ms), earliest first, at most
  // `limit`; and when the earliest pending delivery not yet due is.
  struct DueDeliveries {
    std::vector<std::string> ids;
    std::optional<int64_t> next_attempt_ms;
  };
  absl::StatusOr<DueDeliveries> DueWebhookDeliveries(int64_t now_ms,
                                                     int limit);
  // What sending a delivery needs: the delivery, its webhook's URL and
  // secret, its job and the job event it tells of. NOT_FOUND once the
  // delivery was deleted with its webhook.
  struct WebhookSend {
    v1::WebhookDelivery delivery;
    int64_t next_attempt_ms = 0;  // as stored: when it is due, if pending
    std::string url;
    std::string secret;
    v1::Job job;
    v1::JobEvent event;
  };
  absl::StatusOr<WebhookSend> LoadWebhookSend(const std::string& delivery_id);
  // One attempt's outcome. attempts + 1 and the response code and error
  // are recorded; then the delivery is delivered, pending until
  // `next_attempt_ms`, or failed (neither).
  struct WebhookAttempt {
    int response_code = 0;  // 0: no HTTP answer
    std::string error;      // empty when delivered
    bool delivered = false;
    std::optional<int64_t> next_attempt_ms;  // Unix ms of the retry
  };
  // A delivery deleted meanwhile (with its webhook): OK, nothing written.
  absl::Status RecordWebhookAttempt(const std::string& delivery_id,
                                    const WebhookAttempt& attempt);
  // `listener()` is called whenever deliveries are queued, as the event
  // listener is: inside the writing transaction with the store's lock held;
  // it must return quickly and must not call into the store. Empty: none.
  void SetDeliveryListener(std::function<void()> listener);

  // Result files of a job (the adapter); names unique per job.
  absl::Status PutResultFile(const std::string& job_id,
                             const v1::ResultFile& file);
  absl::StatusOr<std::vector<v1::ResultFile>> ResultFiles(
      const std::string& job_id);

  // The SHA-256 of every blob a record names: files, result files and
  // checkpoint files (of recorded checkpoints or not). The blob store's
  // start-up sweep deletes every other blob, so a new table that names
  // blobs must be added here.
  absl::StatusOr<absl::flat_hash_set<std::string>> ReferencedBlobs();
  // Whether any record of those names blob `sha256`.
  absl::StatusOr<bool> BlobReferenced(const std::string& sha256);

  // Event n of a job (1, 2, … in the order written) <-> its id,
  // "ftevent-<the job id's random part>-<n>": an id tells nothing of other
  // jobs. EventSeq: INVALID_ARGUMENT unless `id` has that form for `job_id`.
  static std::string EventId(const std::string& job_id, int64_t job_seq);
  static absl::StatusOr<int64_t> EventSeq(const std::string& job_id,
                                          const std::string& id);

 private:
  explicit Store(std::unique_ptr<Database> db) : db_(std::move(db)) {}
  static v1::Model FineTunedModel(const v1::Job& job);
  // A list's page size: `def` for 0 (or less), at most `max`.
  static int ClampLimit(int limit, int def, int max);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The seq of row `after` in `table` (files or jobs) of `project`, the
  // exclusive upper bound of the next newest-first page; INT64_MAX when
  // `after` is empty; INVALID_ARGUMENT (unknown cursor) for an id that is
  // missing or another project's.
  absl::StatusOr<int64_t> CursorSeq(absl::string_view table,
                                    const std::string& project,
                                    const std::string& after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Job> LoadJob(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<bool> BlobReferencedLocked(const std::string& sha256)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Within a transaction of the caller's: as the public methods.
  absl::StatusOr<v1::Job> TransitionLocked(
      const std::string& id, v1::JobStatus from, v1::JobStatus to,
      std::optional<int32_t> expect_attempt, const TransitionUpdate& update)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RecordCheckpointLocked(const std::string& job_id, int64_t step,
                                      int32_t attempt,
                                      const std::vector<std::string>& files,
                                      const v1::CheckpointMetrics& metrics)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<QueueEntry>> QueuedJobsLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::map<std::string, int>> RunningPerProjectLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::JobEvent> InsertEvent(const std::string& job_id,
                                           v1::JobEvent event, int32_t attempt,
                                           int64_t attempt_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Queues the deliveries of event `job_seq` of `job_id` (InsertEvent).
  absl::Status QueueWebhookDeliveriesLocked(const std::string& job_id,
                                            int64_t job_seq,
                                            const v1::JobEvent& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::unique_ptr<Database> db_ ABSL_GUARDED_BY(mu_);
  std::function<void(const std::string&)> event_listener_ ABSL_GUARDED_BY(mu_);
  std::function<void()> delivery_listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lathe::store

#endif  // LATHE_SERVER_STORE_STORE_H_
