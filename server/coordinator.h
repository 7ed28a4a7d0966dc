// The domain side of the worker protocol: turns a worker's report of its
// state into durable changes (events, progress, checkpoints, outcomes) and
// answers with the state the server wants (run this attempt, stop that one,
// lease deadline). Also places queued jobs on idle workers, moves jobs on
// cancel, pause and resume, and expires leases of silent workers and
// requeues their jobs.
//
// A job of `devices` N > 1 runs as a gang: one attempt on N workers, ranks
// 0..N-1, placed all at once (scheduler::PlanRound). What each sees:
// - When the first of them reports idle the attempt starts (queued ->
//   running) and every rank gets a lease; they are its committed members
//   and are planned for nothing else. Rank 0 gets its assignment on its
//   next idle report (at once if it was the first); a rank > 0 only once
//   rank 0 has reported its rendezvous (RunningAttempt.rendezvous), which
//   its assignment then carries. Until then its idle reports renew its
//   lease and get no assignment.
// - Rank 0 reports the attempt as a single worker does: events, progress,
//   checkpoints, result files and the outcome that ends the job. A rank >
//   0's report renews its lease and gets the same stop directives (cancel,
//   pause); anything else in it is ignored. Its outcome SUCCEEDED, STOPPED
//   or CANCELLED releases its lease only.
// - A rank's failure (rank 0's too, in a gang) fails the attempt as a lost
//   worker does: the job is retried with backoff, or fails at
//   max_attempts, or is cancelled if it was cancelling; a failure that is
//   the job's fault (user_fault) fails the job at once, as on one worker.
// - A lost rank (its lease expired) fails the attempt the same way, except
//   while the job pauses: then only rank 0's loss ends the attempt (rank 0
//   alone writes the pause checkpoint).
// - Once the attempt ends, for whatever reason, every rank's lease is
//   released: the others are told to stop on their next report, and
//   members not yet assigned are free again.
// A job on one worker is a gang of one: rank 0, world_size 1.
//
// Knows nothing of gRPC. Thread-safe; it decides under its lock and writes
// outside it:
// - mu_ guards the in-memory state only (the fleet, the placement plan,
//   the lease table) and is never held across a store call, so no report,
//   heartbeat or sweep waits on mu_ for another job's SQLite fsync.
// - A job's record, its events and its lease change only under that job's
//   own lock (JobLocks), held from the read a decision is made on to the
//   write it makes: a worker's report, an assignment, cancel, pause and
//   resume, a lease expiry, a result upload. Per job these therefore run one
//   at a time, each on the state the previous one left, exactly as they did
//   under one global lock: no lost update, no reordering, no report of an
//   attempt written after the sweep has requeued its job. Different jobs'
//   writes no longer wait for each other's decisions (the store still
//   commits one transaction at a time).
// - Placement is planned from a snapshot of the queue read outside mu_;
//   the assignment itself is the compare-and-set queued -> running under
//   the job's lock, and a job being assigned (or holding a lease) is left
//   out of any plan made meanwhile.
// - Lock order: a job's lock, then mu_, then the store's. Never mu_ then a
//   job's lock; never two jobs' locks at once.
#ifndef LATHE_SERVER_COORDINATOR_H_
#define LATHE_SERVER_COORDINATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lathe/v1/worker.pb.h"
#include "scheduler/lease_table.h"
#include "scheduler/placement.h"
#include "server/job_locks.h"
#include "server/job_request.h"
#include "server/store/store.h"

namespace lathe {

struct CoordinatorOptions {
  absl::Duration lease_ttl = absl::Seconds(15);
  int max_attempts = 3;
  absl::Duration retry_backoff_base = absl::Seconds(2);
  absl::Duration retry_backoff_cap = absl::Minutes(5);
  // A job stored by an older lathed is brought up to the settings the
  // worker expects (FillJobDefaults) when it is assigned.
  JobDefaults job_defaults;
  // A placement plan is reused for this long before it is recomputed.
  absl::Duration replan_interval = absl::Milliseconds(200);
  scheduler::SchedulingPolicy policy;
  // Priority preemption (scheduler::PlanPreemption): a queued job that no
  // round can place may stop strictly lower-class running jobs, which
  // checkpoint, hand back and are queued again in their old place; none is
  // preempted twice within `preemption_grace`. The workers freed are held
  // for the preempting job for up to `preemption_hold`.
  bool preemption = true;
  absl::Duration preemption_grace = absl::Minutes(10);
  absl::Duration preemption_hold = absl::Minutes(5);
};

class Coordinator {
 public:
  // `store` must outlive the Coordinator. Running jobs found in the store
  // (lathed restarted) get a fresh lease so their worker can report back.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      store::Store& store, CoordinatorOptions options);

  // Handles one report; returns the directive to send back. A report of a
  // running attempt is written in one transaction: its events, progress,
  // checkpoints and outcome, all or none. `peer_host` is the host the
  // worker's stream comes from ("10.0.0.7", "[::1]"): it completes a
  // rendezvous reported as ":port". INVALID_ARGUMENT if the report has no
  // worker id; FAILED_PRECONDITION for an outcome naming a result file not
  // uploaded (the rest of the report is written).
  absl::StatusOr<v1::WorkerDirective> HandleReport(
      const v1::WorkerReport& r, const std::string& peer_host = "");
  // A report that may carry several attempts (WorkerReport.max_attempts >
  // 1): one directive per attempt, each naming its job (for_job_id), then
  // one with an assignment when the worker has a free slot and the plan
  // packs a job onto it (LoRA jobs of the base it trains already;
  // scheduler/placement.h, rule 7). A worker of one attempt gets
  // HandleReport's one directive. Errors as HandleReport's.
  absl::StatusOr<std::vector<v1::WorkerDirective>> HandleReports(
      const v1::WorkerReport& r, const std::string& peer_host = "");

  // Cancel: queued, paused (or validating_files) -> cancelled; running ->
  // cancelling (the attempt is then told to stop); cancelling stays.
  // FAILED_PRECONDITION once the job has finished.
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);
  // Pause: queued or running -> paused (a running attempt is then told to
  // checkpoint and stop). Resume: paused -> queued; while the attempt is
  // still writing its pause checkpoint the job stays paused with
  // resume_requested set and is queued as soon as the attempt stops (or
  // its worker is lost); pausing again cancels that request.
  // FAILED_PRECONDITION from any other state.
  absl::StatusOr<v1::Job> PauseJob(const std::string& job_id);
  absl::StatusOr<v1::Job> ResumeJob(const std::string& job_id);

  // Forgets a worker whose stream ended (its running attempt, if any, keeps
  // its lease until it expires or the worker reconnects).
  void WorkerDisconnected(const std::string& worker_id);

  // Checks that `attempt` is the current attempt of a live job (for file
  // fetches and result uploads). FAILED_PRECONDITION otherwise.
  absl::Status CheckCurrentAttempt(const std::string& job_id, int32_t attempt);

  // Records an uploaded result file: one of checkpoint `checkpoint_step`'s,
  // or of the adapter when it is 0. Checked and written under the job's
  // lock, which lease expiry and assignment take too, so the upload of an
  // attempt that lost its lease meanwhile is never recorded.
  // FAILED_PRECONDITION when `attempt` is not current (or the checkpoint is
  // already recorded).
  absl::Status RecordResultFile(const std::string& job_id, int32_t attempt,
                                int64_t checkpoint_step,
                                const v1::ResultFile& file);

  // The queue position of each of `project`'s queued jobs: 1 + how many
  // of the project's queued jobs the scheduler would place before it
  // (scheduler::RankOrder). Other projects' jobs are not counted.
  absl::StatusOr<absl::flat_hash_map<std::string, int64_t>> QueuePositions(
      const std::string& project);
  // Sets `job`'s queue_position (QueuePositions; 0 unless queued).
  absl::Status FillQueuePosition(v1::Job& job);

  // Expires overdue leases: the attempt fails and the job requeues with
  // backoff (or fails once max_attempts attempts have failed). Returns how
  // many expired.
  int SweepExpiredLeases(absl::Time now);

  // Plans a round now (as an idle report would) so that a queued job no
  // worker is free for may preempt (CoordinatorOptions::preemption): with
  // every worker busy no idle report comes. Called by lathed's sweep.
  void ConsiderPreemption(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // The connected workers as the scheduler sees them (for /metrics).
  std::vector<scheduler::WorkerInfo> Fleet() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Coordinator(store::Store& store, CoordinatorOptions options)
      : store_(store), options_(options), leases_(options.lease_ttl) {}

  // One placed attempt's workers, by rank (a job on one worker: one).
  struct Gang {
    int32_t attempt = 0;
    std::vector<std::string> workers;  // by rank: world_size of them
    // Rank 0's c10d store, "host:port", once it has reported it.
    std::string rendezvous;
    // Rank 0's assignment; every rank's is a copy with its rank set. The
    // ranks not yet sent theirs are those still in committed_.
    v1::Assignment assignment;
  };

  // Records what `r` says of its worker for the plan (devices, labels,
  // whether it is idle, its slots and what runs there).
  void UpdateFleet(const v1::WorkerReport& r) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes the job's lock for the report, and mu_ only around the lease
  // table.
  absl::Status HandleAttempt(const v1::WorkerReport& r,
                             const std::string& peer_host,
                             v1::WorkerDirective& out) ABSL_LOCKS_EXCLUDED(mu_);
  // The report of `job`'s live attempt by a rank > 0. REQUIRES: the job's
  // lock.
  absl::Status HandleRankReport(const v1::WorkerReport& r, const v1::Job& job,
                                v1::WorkerDirective& out)
      ABSL_LOCKS_EXCLUDED(mu_);
  // What `a`'s outcome (rank 0's, on `worker_id`) writes (into `report`);
  // `requeued` when it queues the job again. FAILED_PRECONDITION if a
  // result file it names was not uploaded. REQUIRES: the job's lock.
  absl::Status DecideOutcome(const v1::Job& job, const std::string& worker_id,
                             const v1::RunningAttempt& a,
                             store::Store::AttemptReport& report,
                             bool& requeued) ABSL_LOCKS_EXCLUDED(mu_);
  // How `job` moves when its live attempt fails on rank `rank` (worker
  // `worker_id`): its lease expired (`failure` null) or it reported
  // `failure`. The job's fault (failure->user_fault()) fails it; otherwise
  // it is cancelled if cancelling, fails at max_attempts, or is retried
  // with backoff (a paused job, whose resume waits, is queued).
  store::Store::AttemptReport::StatusChange AttemptFailed(
      const v1::Job& job, int rank, const std::string& worker_id,
      const v1::JobError* failure, absl::Time now) const;
  // Takes the planned job's lock to start its attempt.
  absl::Status MaybeAssign(const v1::WorkerReport& r, v1::WorkerDirective& out)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The idle report of a committed member `worker_id`: renews its rank's
  // lease and, once its rank may start, puts its assignment in `out`. False
  // if the worker is no committed member.
  bool AssignCommitted(const std::string& worker_id, absl::Time now,
                       v1::WorkerDirective& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts `rank`'s assignment of `gang` (job `job_id`) in `out`; the rank is
  // no longer a committed member.
  void SendAssignment(const std::string& job_id, Gang& gang, int rank,
                      v1::WorkerDirective& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails or requeues the job of `lease`, whose lease has just been taken.
  // REQUIRES: the job's lock.
  void ExpireAttempt(const scheduler::LeaseTable::Lease& lease, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // `job`'s current attempt lost rank `rank` (worker `worker_id`): its
  // lease expired (`failure` null) or it reported `failure`. Moves the job
  // as AttemptFailed says; a paused job stays paused (queued if a resume
  // waits), and loses its attempt only with rank 0. Never moves a job
  // whose attempt is not live. REQUIRES: the job's lock; the rank's own
  // lease already taken.
  void LoseRank(const v1::Job& job, int rank, const std::string& worker_id,
                const v1::JobError* failure, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // `job_id`'s attempt `attempt` has ended: every rank's lease is
  // released, its gang forgotten and its members not yet assigned freed.
  // REQUIRES: the job's lock.
  void EndAttempt(const std::string& job_id, int32_t attempt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CheckCurrentAttempt. REQUIRES: the job's lock.
  absl::Status CheckCurrentAttemptLocked(const std::string& job_id,
                                         int32_t attempt)
      ABSL_LOCKS_EXCLUDED(mu_);
  // True while `job`'s current attempt may still report: running,
  // cancelling, or paused with the attempt's lease not yet released.
  bool AttemptIsLive(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AttemptIsLiveNow(const v1::Job& job) ABSL_LOCKS_EXCLUDED(mu_);

  // Recomputes pending_ from a snapshot of the queue (read outside mu_),
  // the fleet and the jobs being assigned, unless the plan is fresh.
  absl::Status RefreshPlan(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Preemption for `job`, which the last round left waiting: plans it from
  // `fleet` and the running attempts' workers (`running`: job id -> workers
  // by rank), asks the victims to checkpoint and hand back, and holds the
  // workers for `job`. Writes events; takes each victim's lock in turn.
  void MaybePreempt(const scheduler::JobRequest& job,
                    const std::vector<scheduler::WorkerInfo>& fleet,
                    const absl::flat_hash_map<std::string,
                                              std::vector<std::string>>& running,
                    absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // What a live attempt of `job` is told beyond SetStopIfAsked: checkpoint
  // and stop when it is being preempted.
  void SetStopIfPreempted(const v1::Job& job, int32_t attempt,
                          v1::WorkerDirective& out) ABSL_LOCKS_EXCLUDED(mu_);

  // A worker joined, left or became idle, or a job was requeued: the plan
  // is recomputed on the next idle report.
  void PlanIsStale() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++changes_; }

  store::Store& store_;
  const CoordinatorOptions options_;
  JobLocks job_locks_;

  absl::Mutex mu_;
  // A job's entries also change only under that job's lock (but for a
  // committed member's lease renewal).
  scheduler::LeaseTable leases_ ABSL_GUARDED_BY(mu_);
  // Started attempts: job id -> its gang. An entry is made when the
  // attempt starts (or, after a restart, when rank 0 reports its
  // rendezvous) and goes when the attempt ends.
  absl::flat_hash_map<std::string, Gang> gangs_ ABSL_GUARDED_BY(mu_);
  // Workers of a started (or starting) attempt not yet sent their
  // assignment: worker id -> job id. Never idle to the scheduler.
  absl::flat_hash_map<std::string, std::string> committed_ ABSL_GUARDED_BY(mu_);
  // Connected workers as the scheduler sees them.
  absl::flat_hash_map<std::string, scheduler::WorkerInfo> fleet_
      ABSL_GUARDED_BY(mu_);
  // The last plan: worker id -> the job, and its rank in the job's gang, it
  // should take when it (or another of the gang) reports idle.
  struct PlannedRank {
    std::string job_id;
    int rank = 0;
    // Beside the jobs the worker trains already (a packing spot).
    bool packed = false;
  };
  absl::flat_hash_map<std::string, PlannedRank> pending_ ABSL_GUARDED_BY(mu_);
  // The last plan's workers of each placed job, by rank.
  absl::flat_hash_map<std::string, std::vector<std::string>> planned_
      ABSL_GUARDED_BY(mu_);
  absl::Time plan_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // PlanIsStale() calls, and how many of them the plan has seen.
  uint64_t changes_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t planned_changes_ ABSL_GUARDED_BY(mu_) = 0;
  // Jobs taken off the plan for an assignment not yet written.
  absl::flat_hash_set<std::string> starting_ ABSL_GUARDED_BY(mu_);
  // Jobs already told that no connected worker can run them.
  absl::flat_hash_set<std::string> warned_unplaceable_ ABSL_GUARDED_BY(mu_);
  // Running attempts asked to checkpoint and hand back for a preempting
  // job (job id -> that job and the attempt); gone when the attempt ends.
  struct Preempted {
    std::string by;
    int32_t attempt = 0;
  };
  absl::flat_hash_map<std::string, Preempted> preempting_ ABSL_GUARDED_BY(mu_);
  // When each job was last preempted (for the grace period; this lathed's
  // memory only).
  absl::flat_hash_map<std::string, absl::Time> last_preempted_
      ABSL_GUARDED_BY(mu_);
  // Workers held for a preempting job: planned for it alone until it
  // starts, leaves the queue, or the hold ends.
  struct Hold {
    std::string job_id;
    absl::Time until;
  };
  absl::flat_hash_map<std::string, Hold> held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lathe

#endif  // LATHE_SERVER_COORDINATOR_H_
