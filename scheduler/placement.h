// Placement: which queued job runs on which idle worker, decided one round
// at a time as pure logic (no I/O, no clock: `now` is passed in).
//
// The policy, in the order it decides:
//
//  1. Fit. A job runs only on a worker whose capacity (its largest device's
//     memory) is at least the job's estimated need, whose device kind is the
//     one the job asks for (if any), and which carries every label the job
//     requires. Among the idle workers that fit, the job takes the smallest
//     (best fit), leaving big workers to jobs that need them. A LoRA job may
//     instead join a busy worker that trains the same base (7).
//  2. Rank. Jobs are taken in rank order:
//       a. effective priority class, highest first: the job's class, raised
//          one class per `aging` it has waited, up to kHigh, so that a job
//          never waits forever behind a stream of higher classes;
//       b. fair share, lowest first: (jobs of the project running + placed
//          earlier in this round) / the project's weight, so a project that
//          queued 100 jobs does not starve one that queued 1;
//       c. enqueue order, earliest first.
//  3. No head-of-line blocking. A job that fits no idle worker is passed
//     over and the next job in rank order is tried; it keeps its rank. This
//     never delays the passed-over job: in every round it is offered the
//     idle workers before any job ranked below it, so a lower-ranked job can
//     only ever take a worker the higher-ranked job cannot use (one too
//     small, of another kind, or without its labels). When a big worker
//     frees, a big job waiting for it gets it ahead of the small jobs ranked
//     below it; small jobs ranked above it take it only if no smaller idle
//     worker fits them, and aging bounds how long they can outrank it.
//  4. Gangs. A job that asks for `devices` N > 1 workers (data-parallel
//     ranks, each needing `memory_bytes`) is placed on N idle workers at
//     once, or on none: a round never hands a gang part of its workers, so
//     two gangs can never each hold half of what both need (no deadlock).
//     The highest-ranked gang that cannot be placed in a round reserves the
//     idle workers it could take (at most N-1): they stay idle, so jobs
//     ranked below it cannot keep taking every worker that frees and starve
//     it; it is placed as soon as enough are free. Only one gang reserves
//     per round, so reservations cannot deadlock either. Jobs ranked below
//     it backfill the other idle workers. A placed gang counts N jobs
//     towards its project's fair share.
//  5. Backoff. A job whose `not_before` is after `now` is not placed.
//  6. Unplaceable. A job that fits no worker of the fleet, idle or busy (a
//     gang: fewer than N workers of the fleet fit it), is
//     reported with a reason instead of being ranked, so the caller can fail
//     it rather than let it wait forever.
//  7. Packing. A worker of `max_attempts` > 1 trains several LoRA jobs on
//     one base model in one process, over one frozen copy of the base. A
//     job that can share (`shared_bytes` > 0, a `base_id`, one device) may
//     join a worker that runs, or was given earlier in the round, only jobs
//     that share the same `base_id`, while that worker has a free slot
//     (running + given < max_attempts) and its capacity covers the base
//     once (the largest shared_bytes among those jobs and the new one) plus
//     every one's own part (memory_bytes - shared_bytes). The job takes
//     such a spot rather than an idle worker, leaving idle workers to other
//     jobs; among spots the one with the least capacity left after it (best
//     fit; ties: the first in the fleet), as for idle workers. So an idle
//     worker given a LoRA job can take more jobs on its base in that round.
//     A job of another base, one that cannot share, or a gang never joins a
//     worker that runs anything. Packing changes only where a job goes, not
//     whether or in what order: jobs are offered in rank order (2, 3), a
//     packed job counts one towards its project's share, a spot always has
//     at least the job's memory_bytes (so 6 is unchanged), and gangs
//     reserve idle workers only (4). With every max_attempts 1 there are no
//     spots and rounds decide exactly as 1-6 say.
//
// Cost of a round: O(Q log Q + W log W) for Q queued jobs and W workers,
// plus a scan past idle workers lacking a job's labels (none for jobs that
// require no labels), plus for each job that can share a scan of the
// workers with a free slot that train its base (none while every
// max_attempts is 1).
#ifndef LATHE_SCHEDULER_PLACEMENT_H_
#define LATHE_SCHEDULER_PLACEMENT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace lathe::scheduler {

struct Device {
  std::string kind;          // "cuda" or "cpu"
  int64_t memory_bytes = 0;  // 80 GiB for an H100
};

// An attempt a worker runs, as packing (rule 7) sees it.
struct RunningAttempt {
  std::string job_id;
  std::string base_id;       // its JobRequest's
  int64_t memory_bytes = 0;  // its JobRequest's
  int64_t shared_bytes = 0;  // its JobRequest's
};

struct WorkerInfo {
  std::string worker_id;
  std::vector<Device> devices;  // usually one: a worker process per GPU
  std::map<std::string, std::string> labels;  // {"zone": "eu-1"}
  bool idle = false;  // false while it runs (or was just given) an attempt
  // How many attempts it runs at once (LoRA jobs on one base, rule 7); 1:
  // one attempt at a time. REQUIRES: >= 1.
  int max_attempts = 1;
  // What it runs now. Only a busy worker whose every attempt is listed here
  // can take more (rule 7); one that is busy with nothing listed takes
  // none. REQUIRES: empty while idle.
  std::vector<RunningAttempt> running;
};

// The device that gives `worker` its capacity: its largest (the first of
// equals), or a Device with no kind and no memory if it has none.
Device WorkerCapacity(const WorkerInfo& worker);

enum class Priority { kLow = 0, kNormal = 1, kHigh = 2 };

struct JobRequest {
  std::string job_id;
  std::string project;
  Priority priority = Priority::kNormal;
  int64_t memory_bytes = 0;  // the need: EstimateMemoryBytes
  std::string device_kind;   // "cuda", "cpu", or "" for any
  std::map<std::string, std::string> required_labels;
  int64_t enqueue_order = 0;                        // smaller = earlier
  absl::Time enqueued_at = absl::InfiniteFuture();  // unset: never aged
  absl::Time not_before = absl::InfinitePast();     // retry backoff
  // Workers the job runs on at once (ranks of one data-parallel gang),
  // each needing memory_bytes. REQUIRES: >= 1.
  int devices = 1;
  // The base model's content hash; "" = unknown (the job shares nothing).
  std::string base_id;
  // The part of memory_bytes that a job beside it on the same base does not
  // need again: SharedBaseBytes. 0 = it cannot share (full fine-tuning, or
  // anything else not LoRA); a gang (devices > 1) never shares.
  // REQUIRES: 0 <= shared_bytes <= memory_bytes.
  int64_t shared_bytes = 0;
};

struct SchedulingPolicy {
  // Waiting this long raises a job one priority class (up to kHigh).
  // absl::InfiniteDuration() or a non-positive value turns aging off.
  absl::Duration aging = absl::Minutes(10);
  // Fair-share weight per project; a project not listed weighs 1. A project
  // of weight 2 gets twice the running jobs of one of weight 1.
  // REQUIRES: every weight > 0.
  absl::flat_hash_map<std::string, double> project_weights;
};

struct Placement {
  std::string job_id;
  std::string worker_id;
  int rank = 0;  // within the job's gang: 0..devices-1
  // Beside other jobs on its base (rule 7): the worker runs, or was given
  // earlier in this round, at least one other attempt, whose base this one
  // shares.
  bool packed = false;
};

// Idle workers held back this round for a gang that could not be placed.
struct Reservation {
  std::string job_id;
  std::vector<std::string> worker_ids;
};

struct Unplaceable {
  std::string job_id;
  std::string reason;  // "needs 90.0 GiB of cuda memory; the largest ..."
};

struct RoundPlan {
  std::vector<Placement> placements;     // in the order they were decided
  std::vector<Unplaceable> unplaceable;  // in enqueue order
  std::vector<Reservation> reserved;     // at most one
};

// Decides one round: places jobs of `queue` on the idle workers of `fleet`
// by the policy above, each worker getting at most one job (a gang of N
// gets N placements, ranks 0..N-1, consecutive in the plan); a worker of
// max_attempts > 1, idle or busy, may also take LoRA jobs on one base up
// to its free slots (rule 7: those placements are `packed`). `fleet` lists
// every connected worker, busy ones included (they decide what is
// placeable); `running_per_project` counts each project's running jobs (a
// project not listed runs none). Jobs that fit no worker of `fleet` are in
// `unplaceable` (whatever their backoff); judge them against a fleet that
// is complete, e.g. not right after the server starts.
// REQUIRES: job ids unique in `queue`, worker ids unique in `fleet`,
// memory_bytes >= 0, devices >= 1, and as JobRequest and WorkerInfo say.
RoundPlan PlanRound(
    const std::vector<JobRequest>& queue, const std::vector<WorkerInfo>& fleet,
    const absl::flat_hash_map<std::string, int>& running_per_project,
    const SchedulingPolicy& policy, absl::Time now);

// The order in which rounds of PlanRound would take `queue`'s jobs if every
// job fitted an idle worker: rank order (effective class, fair share as
// each job is taken, enqueue order), then the jobs waiting out a retry
// backoff in enqueue order. What a job's queue position is measured by.
// REQUIRES: as PlanRound.
std::vector<std::string> RankOrder(
    const std::vector<JobRequest>& queue,
    const absl::flat_hash_map<std::string, int>& running_per_project,
    const SchedulingPolicy& policy, absl::Time now);

// Priority preemption: what to stop so that `job`, which no round could
// place, can run. A running job is a victim only if its priority class is
// strictly below `job`'s (never the same class) and it was not preempted
// within `grace` of `now`. A busy worker that fits `job` is freed when
// every attempt on it stops, that is when every job on it is a victim (the
// jobs of `running` that list it and those its WorkerInfo::running lists);
// one that runs any job that cannot be a victim (of `job`'s class or
// above, in its grace, or not in `running`) is never freed. So a gang
// stopped frees all its ranks, and a LoRA job packed beside others frees
// its worker only with them. The plan frees workers one step at a time
// until they, with the idle ones that fit, make `job.devices`: each step
// frees the busy worker that fits needing the fewest new victims; among
// equals the one whose new victims free the most fitting workers, then
// whose new victims lose the least work (time since started, summed), then
// whose new victims' smallest id is first. With one attempt per worker
// that takes the fewest victims: those freeing the most fitting workers
// first, and among equals the most recently started. nullopt when no
// preemption is needed (enough idle workers fit) or none would be enough.
// `job` only takes freed or idle workers: the plan never stops some of a
// worker's jobs so that it may join the others (rule 7). The caller asks
// the victims to checkpoint and hand back, and requeues them at the front
// of their class.
struct RunningJob {
  std::string job_id;
  Priority priority = Priority::kNormal;
  std::vector<std::string> worker_ids;  // a gang's every rank
  absl::Time started_at;
  absl::Time last_preempted = absl::InfinitePast();
};

struct PreemptionPlan {
  std::vector<std::string> victims;  // job ids, in the order chosen
  std::vector<std::string> workers;  // those `job` will take (devices of them)
};

std::optional<PreemptionPlan> PlanPreemption(
    const JobRequest& job, const std::vector<WorkerInfo>& fleet,
    const std::vector<RunningJob>& running, absl::Duration grace,
    absl::Time now);

}  // namespace lathe::scheduler

#endif  // LATHE_SCHEDULER_PLACEMENT_H_
