#include "server/coordinator.h"

#include <algorithm>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/ids.h"
#include "common/job_state.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

bool IsLive(v1::JobStatus s) {
  return s == v1::JOB_STATUS_RUNNING || s == v1::JOB_STATUS_CANCELLING;
}

std::string FineTunedModelName(const v1::Job& job) {
  // ft:<base>:<suffix>:<job id without prefix>, as the hosted APIs name them.
  std::string id = job.id().substr(job.id().find('-') + 1);
  return absl::StrCat("ft:", job.model(), ":",
                      job.suffix().empty() ? "lathe" : job.suffix(), ":", id);
}

scheduler::Priority SchedulerPriority(v1::JobPriority p) {
  return p == v1::JOB_PRIORITY_HIGH  ? scheduler::Priority::kHigh
         : p == v1::JOB_PRIORITY_LOW ? scheduler::Priority::kLow
                                     : scheduler::Priority::kNormal;
}

const char* PriorityName(scheduler::Priority p) {
  return p == scheduler::Priority::kHigh  ? "high"
         : p == scheduler::Priority::kLow ? "low"
                                          : "normal";
}

// The store's queue as the scheduler sees it.
std::vector<scheduler::JobRequest> SchedulerQueue(
    const std::vector<store::Store::QueueEntry>& queue) {
  std::vector<scheduler::JobRequest> jobs;
  jobs.reserve(queue.size());
  for (const auto& q : queue) {
    scheduler::JobRequest j;
    j.job_id = q.job_id;
    j.project = q.project;
    j.priority = SchedulerPriority(q.priority);
    j.memory_bytes = q.memory_bytes;
    j.devices = std::max(q.devices, 1);
    if (j.devices == 1 && !q.base_sha256.empty()) {
      j.base_id = q.base_sha256;
      j.shared_bytes = std::clamp<int64_t>(q.shared_memory_bytes, 0, q.memory_bytes);
    }
    j.enqueue_order = q.seq;
    j.enqueued_at = absl::FromUnixSeconds(q.created_at);
    j.not_before = absl::FromUnixMillis(q.not_before_ms);
    jobs.push_back(std::move(j));
  }
  return jobs;
}

// `job` as the scheduler counts it on the worker that trains it: its base
// and memory, the part another job of that base shares.
scheduler::RunningAttempt RunningOn(const v1::Job& job) {
  return {.job_id = job.id(),
          .base_id = job.base_sha256(),
          .memory_bytes = job.memory_bytes(),
          .shared_bytes = std::min(job.shared_memory_bytes(), job.memory_bytes())};
}

// How many workers `job` runs on (a job stored before devices: one).
int WorldSize(const v1::Job& job) { return std::max(job.devices(), 1); }

// A gang's rank that failed because the gang broke, not the job: a peer
// lost mid-training (the worker's "rank_lost") or never joined
// ("rendezvous_failed").
bool IsGangFailure(const v1::JobError& e) {
  return e.code() == "rank_lost" || e.code() == "rendezvous_failed";
}

// "Worker w1", or "Worker w1 (rank 1)" in a gang: who an event names.
std::string WorkerOfRank(const v1::Job& job, const std::string& worker_id,
                         int rank) {
  std::string out =
      absl::StrCat("Worker ", worker_id.empty() ? "?" : worker_id);
  if (WorldSize(job) > 1) absl::StrAppend(&out, " (rank ", rank, ")");
  return out;
}

// What every rank of `job`'s live attempt is told: stop when the job is
// cancelling, checkpoint and stop when it is paused.
void SetStopIfAsked(const v1::Job& job, v1::WorkerDirective& out) {
  if (job.status() == v1::JOB_STATUS_CANCELLING) {
    out.set_stop(true);
    out.set_stop_reason("job cancelled");
  } else if (job.status() == v1::JOB_STATUS_PAUSED) {
    out.set_stop(true);
    out.set_checkpoint_before_stop(true);
    out.set_stop_reason("job paused");
  }
}

// Rank 0's rendezvous as the other ranks connect to it: ":port" is
// completed with the host its stream comes from.
std::string RendezvousAddress(const std::string& reported,
                              const std::string& peer_host) {
  if (absl::StartsWith(reported, ":")) return peer_host + reported;
  return reported;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    store::Store& store, CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator(store, options));
  absl::Time now = absl::Now();
  for (auto status : {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_CANCELLING}) {
    ASSIGN_OR_RETURN(auto jobs, store.JobsInStatus(status));
    absl::MutexLock lock(&c->mu_);
    for (const v1::Job& job : jobs) {
      c->leases_.Grant(job.id(), job.attempt(), "", now);
    }
  }
  // Every other non-terminal state must be one something advances. A job
  // in validating_files (written by a lathed before creation became one
  // transaction) has had its files checked: it is queued. A paused job
  // whose resume waited for a pause checkpoint has no live attempt after a
  // restart (paused attempts get no lease back): it is queued too.
  ASSIGN_OR_RETURN(auto validating,
                   store.JobsInStatus(v1::JOB_STATUS_VALIDATING_FILES));
  for (const v1::Job& job : validating) {
    store::TransitionUpdate u;
    u.message = "Files validated; the job is queued (recovered at start-up)";
    auto moved = store.Transition(job.id(), v1::JOB_STATUS_VALIDATING_FILES,
                                  v1::JOB_STATUS_QUEUED, std::nullopt, u);
    if (!moved.ok()) return moved.status();
  }
  ASSIGN_OR_RETURN(auto paused, store.JobsInStatus(v1::JOB_STATUS_PAUSED));
  for (const v1::Job& job : paused) {
    if (!job.resume_requested()) continue;
    store::TransitionUpdate u;
    u.message =
        "Resumed; the job is queued (lathed restarted during the pause)";
    auto moved = store.Transition(job.id(), v1::JOB_STATUS_PAUSED,
                                  v1::JOB_STATUS_QUEUED, std::nullopt, u);
    if (!moved.ok()) return moved.status();
  }
  return c;
}

absl::StatusOr<v1::WorkerDirective> Coordinator::HandleReport(
    const v1::WorkerReport& r, const std::string& peer_host) {
  if (r.worker_id().empty()) {
    return absl::InvalidArgumentError("worker_id: required");
  }
  UpdateFleet(r);
  v1::WorkerDirective out;
  if (r.has_attempt()) {
    RETURN_IF_ERROR(HandleAttempt(r, peer_host, out));
  } else {
    RETURN_IF_ERROR(MaybeAssign(r, out));
  }
  return out;
}

void Coordinator::UpdateFleet(const v1::WorkerReport& r) {
  absl::MutexLock lock(&mu_);
  auto [it, joined] = fleet_.try_emplace(r.worker_id());
  scheduler::WorkerInfo& w = it->second;
  const int slots = std::max(r.max_attempts(), 1);
  const size_t was_running = w.running.size();
  w.max_attempts = slots;
  w.running.clear();
  if (slots > 1) {
    // What it trains, by the attempts started on it alone (their jobs say
    // their base and memory), and any it reports that this server did not
    // start (after a restart): those share nothing, so nothing is packed
    // beside them.
    absl::flat_hash_set<std::string> known;
    for (const auto& [job_id, gang] : gangs_) {
      if (gang.workers.size() != 1 || gang.workers[0] != r.worker_id()) continue;
      w.running.push_back(RunningOn(gang.assignment.job()));
      known.insert(job_id);
    }
    auto reported = [&](const v1::RunningAttempt& a) {
      if (!known.insert(a.job_id()).second) return;
      w.running.push_back({.job_id = a.job_id()});
    };
    if (r.has_attempt()) reported(r.attempt());
    for (const v1::RunningAttempt& a : r.more_attempts()) reported(a);
  }
  // A committed member waits for its assignment: not idle to the plan.
  const bool idle = !r.has_attempt() && r.more_attempts().empty() &&
                    w.running.empty() && !committed_.contains(r.worker_id());
  if (joined || (!w.idle && idle) || w.running.size() != was_running) {
    PlanIsStale();
  }
  w.worker_id = r.worker_id();
  w.devices.clear();
  for (const v1::Device& d : r.devices()) {
    w.devices.push_back({d.kind(), d.memory_bytes()});
  }
  w.labels = {r.labels().begin(), r.labels().end()};
  w.idle = idle;
}

absl::StatusOr<std::vector<v1::WorkerDirective>> Coordinator::HandleReports(
    const v1::WorkerReport& r, const std::string& peer_host) {
  if (r.max_attempts() <= 1 && r.more_attempts().empty()) {
    ASSIGN_OR_RETURN(v1::WorkerDirective one, HandleReport(r, peer_host));
    return std::vector<v1::WorkerDirective>{std::move(one)};
  }
  if (r.worker_id().empty()) {
    return absl::InvalidArgumentError("worker_id: required");
  }
  UpdateFleet(r);
  std::vector<v1::WorkerDirective> out;
  int attempts = 0;
  // Each attempt as the report of a worker running it alone.
  auto answer = [&](const v1::RunningAttempt& a) -> absl::Status {
    v1::WorkerReport single;
    single.set_worker_id(r.worker_id());
    *single.mutable_attempt() = a;
    v1::WorkerDirective d;
    RETURN_IF_ERROR(HandleAttempt(single, peer_host, d));
    d.set_for_job_id(a.job_id());
    out.push_back(std::move(d));
    ++attempts;
    return absl::OkStatus();
  };
  if (r.has_attempt()) RETURN_IF_ERROR(answer(r.attempt()));
  for (const v1::RunningAttempt& a : r.more_attempts()) RETURN_IF_ERROR(answer(a));
  if (attempts < r.max_attempts()) {
    v1::WorkerDirective d;
    RETURN_IF_ERROR(MaybeAssign(r, d));
    if (d.has_assignment() || out.empty()) out.push_back(std::move(d));
  }
  if (out.empty()) out.emplace_back();
  for (size_t i = 0; i + 1 < out.size(); ++i) out[i].set_more(true);
  return out;
}

absl::Status Coordinator::HandleAttempt(const v1::WorkerReport& r,
                                        const std::string& peer_host,
                                        v1::WorkerDirective& out) {
  const v1::RunningAttempt& a = r.attempt();
  // The job's lock from this read to the report's write: a cancel, pause,
  // lease expiry or upload of the same job waits, so the report is decided
  // and written on the job as it is, and nothing of it lands after a later
  // change. mu_ is taken only for the lease table, never across the write.
  JobLocks::Lock job_lock = job_locks_.Acquire(a.job_id());
  auto job_or = store_.GetJob(a.job_id());
  if (!job_or.ok() || job_or->attempt() != a.attempt()) {
    // A message from a superseded (or unknown) attempt is refused.
    out.set_stop(true);
    out.set_stop_reason("attempt superseded");
    out.set_superseded(true);
    out.set_outcome_recorded(a.has_outcome());
    return absl::OkStatus();
  }
  const v1::Job& job = *job_or;
  if (!AttemptIsLiveNow(job)) {
    // Already finished (a repeated outcome) or taken back: nothing to record.
    out.set_stop(!a.has_outcome());
    out.set_stop_reason(absl::StrCat("job is ", StatusName(job.status())));
    out.set_outcome_recorded(a.has_outcome());
    return absl::OkStatus();
  }
  if (a.rank() > 0) return HandleRankReport(r, job, out);
  // The decision: everything the report writes, in one transaction.
  store::Store::AttemptReport report{.job_id = job.id(),
                                     .attempt = a.attempt(),
                                     .steps_done = a.step(),
                                     .steps_total = a.total_steps(),
                                     .trained_tokens = a.trained_tokens()};
  int64_t acked = 0;
  report.events.reserve(a.events_size());
  for (const v1::AttemptEvent& e : a.events()) {
    report.events.push_back({e.seq(), e.event()});
    acked = std::max(acked, e.seq());
  }
  for (const v1::CheckpointReport& c : a.checkpoints()) {
    report.checkpoints.push_back(
        {c.step(), {c.files().begin(), c.files().end()}, c.metrics()});
  }
  // An outcome that cannot be recorded yet (a result file not uploaded)
  // is refused once the rest of the report is written: the worker sends it
  // again, and what it reported meanwhile is kept.
  absl::Status outcome_refused;
  bool requeued = false;
  // Rank 0 of a gang failing because the gang broke (a peer lost, or one
  // that never came): the attempt is lost as a lost worker's is, and
  // retried; it is not the job's failure.
  const bool gang_broke =
      a.has_outcome() && WorldSize(job) > 1 &&
      a.outcome().result() == v1::AttemptOutcome::RESULT_FAILED &&
      IsGangFailure(a.outcome().error());
  if (a.has_outcome() && !gang_broke) {
    outcome_refused = DecideOutcome(job, r.worker_id(), a, report, requeued);
    if (!outcome_refused.ok()) {
      report.notes.clear();
      report.status_change.reset();
    }
  }
  RETURN_IF_ERROR(store_.RecordAttemptReport(report));
  out.set_acked_event_seq(acked);
  for (const v1::CheckpointReport& c : a.checkpoints()) {
    out.add_acked_checkpoints(c.step());
  }
  if (gang_broke) {
    LoseRank(job, 0, r.worker_id(), &a.outcome().error(), absl::Now());
    out.set_outcome_recorded(true);
    return absl::OkStatus();
  }
  const bool outcome_recorded = a.has_outcome() && outcome_refused.ok();
  absl::Time now = absl::Now();
  absl::Time deadline;
  {
    absl::MutexLock lock(&mu_);
    if (!leases_.Renew(job.id(), a.attempt(), now)) {
      leases_.Grant(job.id(), a.attempt(), r.worker_id(), now);
    }
    if (outcome_recorded) {
      EndAttempt(job.id(), a.attempt());
      if (requeued) PlanIsStale();
    } else {
      deadline = leases_.Get(job.id())->deadline;
      if (!a.rendezvous().empty() && WorldSize(job) > 1) {
        // Taught again by every report: after a restart the gang is known
        // from here on.
        Gang& gang = gangs_[job.id()];
        if (gang.attempt != a.attempt()) {
          gang = Gang{.attempt = a.attempt()};
          gang.workers.resize(WorldSize(job));
          gang.workers[0] = r.worker_id();
        }
        gang.rendezvous = RendezvousAddress(a.rendezvous(), peer_host);
      }
    }
  }
  RETURN_IF_ERROR(outcome_refused);
  if (outcome_recorded) {
    out.set_outcome_recorded(true);
    return absl::OkStatus();
  }
  SetStopIfAsked(job, out);
  SetStopIfPreempted(job, a.attempt(), out);
  out.set_lease_deadline_ms(absl::ToUnixMillis(deadline));
  return absl::OkStatus();
}

absl::Status Coordinator::HandleRankReport(const v1::WorkerReport& r,
                                           const v1::Job& job,
                                           v1::WorkerDirective& out) {
  const v1::RunningAttempt& a = r.attempt();
  const absl::Time now = absl::Now();
  if (a.has_outcome()) {
    const v1::AttemptOutcome::Result result = a.outcome().result();
    {
      absl::MutexLock lock(&mu_);
      leases_.ReleaseRank(job.id(), a.rank());
    }
    // Rank 0 reports how the job ended; another rank's end matters only
    // when it failed, which breaks the gang.
    if (result != v1::AttemptOutcome::RESULT_SUCCEEDED &&
        result != v1::AttemptOutcome::RESULT_STOPPED &&
        result != v1::AttemptOutcome::RESULT_CANCELLED) {
      LoseRank(job, a.rank(), r.worker_id(), &a.outcome().error(), now);
    }
    out.set_outcome_recorded(true);
    return absl::OkStatus();
  }
  absl::Time deadline;
  {
    absl::MutexLock lock(&mu_);
    // A rank reporting after a restart has no lease yet.
    if (!leases_.Renew(job.id(), a.attempt(), now, a.rank())) {
      leases_.Grant(job.id(), a.attempt(), r.worker_id(), now, a.rank());
    }
    deadline = leases_.Get(job.id(), a.rank())->deadline;
  }
  SetStopIfAsked(job, out);
  SetStopIfPreempted(job, a.attempt(), out);
  out.set_lease_deadline_ms(absl::ToUnixMillis(deadline));
  return absl::OkStatus();
}

absl::Status Coordinator::DecideOutcome(const v1::Job& job,
                                        const std::string& worker_id,
                                        const v1::RunningAttempt& a,
                                        store::Store::AttemptReport& report,
                                        bool& requeued) {
  const v1::AttemptOutcome& o = a.outcome();
  store::TransitionUpdate u;
  u.trained_tokens = o.trained_tokens();
  if (job.status() == v1::JOB_STATUS_PAUSED &&
      o.result() != v1::AttemptOutcome::RESULT_SUCCEEDED) {
    // The pause is complete: the device is free, the job stays paused.
    v1::JobEvent e;
    e.set_type("message");
    e.set_level(o.result() == v1::AttemptOutcome::RESULT_STOPPED ? "info"
                                                                 : "warn");
    e.set_message(
        o.result() == v1::AttemptOutcome::RESULT_STOPPED
            ? absl::StrCat("Paused at step ", a.step(),
                           "; resume continues from its checkpoint")
            : absl::StrCat("Paused; the attempt ended: ", o.error().message()));
    report.notes.push_back(std::move(e));
    if (!job.resume_requested()) return absl::OkStatus();
    // A resume was asked for while the checkpoint was being written.
    requeued = true;
    u.message = "Resumed; the job is queued";
    report.status_change = store::Store::AttemptReport::StatusChange{
        v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_QUEUED, u};
    return absl::OkStatus();
  }
  v1::JobStatus to = v1::JOB_STATUS_FAILED;
  switch (o.result()) {
    case v1::AttemptOutcome::RESULT_STOPPED:
      if (job.status() == v1::JOB_STATUS_CANCELLING) {
        to = v1::JOB_STATUS_CANCELLED;
        u.message = "The job was cancelled";
      } else {
        // The worker shut down, or the job was preempted, and handed the
        // job back after a checkpoint.
        to = v1::JOB_STATUS_QUEUED;
        std::string by;
        {
          absl::MutexLock lock(&mu_);
          auto p = preempting_.find(job.id());
          if (p != preempting_.end() && p->second.attempt == a.attempt()) {
            by = p->second.by;
          }
        }
        u.message =
            by.empty()
                ? absl::StrCat("The worker stopped at step ", a.step(),
                               " and handed the job back; requeued")
                : absl::StrCat("Preempted by ", by, ": checkpointed at step ",
                               a.step(),
                               " and handed back; queued again in its place, "
                               "it resumes from that checkpoint");
      }
      break;
    case v1::AttemptOutcome::RESULT_SUCCEEDED: {
      ASSIGN_OR_RETURN(auto files, store_.ResultFiles(job.id()));
      for (const std::string& name : o.result_files()) {
        bool found = false;
        for (const auto& f : files) found = found || f.name() == name;
        if (!found) {
          return absl::FailedPreconditionError(
              absl::StrCat("result file ", name, " was not uploaded"));
        }
      }
      to = v1::JOB_STATUS_SUCCEEDED;
      u.fine_tuned_model = FineTunedModelName(job);
      u.message = absl::StrCat("The job has successfully completed: ",
                               *u.fine_tuned_model);
      if (o.has_report()) {
        u.report = o.report();
        if (o.report().has_forgetting()) {
          const v1::ForgettingReport& f = o.report().forgetting();
          u.message += absl::StrFormat(
              "; general_file loss %.4f before, %.4f after (delta %+.4f)",
              f.loss_before(), f.loss_after(), f.delta());
        }
        if (o.report().has_intruders()) {
          u.message += absl::StrCat(
              "; ", o.report().intruders().total(), " intruder dimensions in ",
              o.report().intruders().matrices_size(), " adapted matrices");
        }
      }
      break;
    }
    case v1::AttemptOutcome::RESULT_CANCELLED:
      to = v1::JOB_STATUS_CANCELLED;
      u.message = "The job was cancelled";
      break;
    default:
      if (WorldSize(job) > 1 && !o.error().user_fault()) {
        // A gang's rank 0 fails with any rank it loses: the attempt
        // failed, as when a rank fails or is lost, not the job.
        report.status_change =
            AttemptFailed(job, 0, worker_id, &o.error(), absl::Now());
        report.status_change->update.trained_tokens = o.trained_tokens();
        requeued = report.status_change->to == v1::JOB_STATUS_QUEUED;
        return absl::OkStatus();
      }
      u.error = o.error();
      u.level = "error";
      u.message = absl::StrCat("The job failed: ", o.error().message());
      break;
  }
  report.status_change =
      store::Store::AttemptReport::StatusChange{job.status(), to, u};
  return absl::OkStatus();
}

absl::Status Coordinator::RefreshPlan(absl::Time now) {
  uint64_t seen;
  {
    absl::MutexLock lock(&mu_);
    if (changes_ == planned_changes_ &&
        now - plan_time_ < options_.replan_interval) {
      return absl::OkStatus();
    }
    seen = changes_;
  }
  // Read outside mu_: the store may be busy with another job's write.
  ASSIGN_OR_RETURN(store::Store::SchedulerInput in,
                   store_.ReadSchedulerInput());
  std::vector<std::pair<std::string, std::string>> unplaceable;
  // A job to preempt for, with what its plan needs.
  std::optional<scheduler::JobRequest> preempt_for;
  std::vector<scheduler::WorkerInfo> preempt_fleet;
  absl::flat_hash_map<std::string, std::vector<std::string>> running_workers;
  {
    absl::MutexLock lock(&mu_);
    // A plan made since this read began saw more than this one.
    if (plan_time_ > now) return absl::OkStatus();
    // A job being assigned, or assigned since the read, is not placed
    // again: it counts as its project's running job.
    std::vector<store::Store::QueueEntry> queue;
    absl::flat_hash_map<std::string, int> running_per_project(
        in.running_per_project.begin(), in.running_per_project.end());
    for (store::Store::QueueEntry& q : in.queued) {
      if (starting_.contains(q.job_id) || gangs_.contains(q.job_id) ||
          leases_.Get(q.job_id)) {
        running_per_project[q.project] += std::max(q.devices, 1);
      } else {
        queue.push_back(std::move(q));
      }
    }
    const std::vector<scheduler::JobRequest> requests = SchedulerQueue(queue);
    // Holds end when their job starts (MaybeAssign), leaves the queue, or
    // waited too long.
    absl::flat_hash_map<std::string, const scheduler::JobRequest*> queued;
    for (const scheduler::JobRequest& j : requests) queued[j.job_id] = &j;
    absl::erase_if(held_, [&](const auto& h) {
      return h.second.until < now || !queued.contains(h.second.job_id);
    });
    // Held workers are planned for their job alone.
    std::vector<scheduler::WorkerInfo> fleet;
    fleet.reserve(fleet_.size());
    absl::flat_hash_map<std::string, std::vector<scheduler::WorkerInfo>> holds;
    for (const auto& [id, w] : fleet_) {
      fleet.push_back(w);
      if (auto h = held_.find(id); h != held_.end()) {
        holds[h->second.job_id].push_back(w);
        fleet.back().idle = false;
      }
    }
    scheduler::RoundPlan plan = scheduler::PlanRound(
        requests, fleet, running_per_project, options_.policy, now);
    absl::flat_hash_set<std::string> placed;
    for (const auto& p : plan.placements) placed.insert(p.job_id);
    for (const auto& [job_id, workers] : holds) {
      if (placed.contains(job_id)) continue;
      scheduler::RoundPlan own = scheduler::PlanRound(
          {*queued[job_id]}, workers, running_per_project, options_.policy,
          now);
      plan.placements.insert(plan.placements.end(), own.placements.begin(),
                             own.placements.end());
      for (const auto& p : own.placements) placed.insert(p.job_id);
    }
    pending_.clear();
    planned_.clear();
    for (const auto& p : plan.placements) {
      // One placement a worker at a time: a second one packed on the same
      // worker in this round waits for the next plan.
      if (pending_.contains(p.worker_id)) {
        PlanIsStale();
        continue;
      }
      pending_[p.worker_id] = {p.job_id, p.rank, p.packed};
      std::vector<std::string>& workers = planned_[p.job_id];
      if (static_cast<int>(workers.size()) <= p.rank) {
        workers.resize(p.rank + 1);
      }
      workers[p.rank] = p.worker_id;
    }
    // Preemption, one at a time: the highest-class job left waiting that
    // some worker could run (not unplaceable), if none is under way.
    if (options_.preemption && preempting_.empty() && held_.empty()) {
      absl::flat_hash_set<std::string> cannot;
      for (const auto& u : plan.unplaceable) cannot.insert(u.job_id);
      for (const scheduler::JobRequest& j : requests) {
        if (placed.contains(j.job_id) || cannot.contains(j.job_id) ||
            j.not_before > now || j.priority == scheduler::Priority::kLow) {
          continue;
        }
        if (!preempt_for.has_value() || j.priority > preempt_for->priority) {
          preempt_for = j;  // requests are in queue order: the oldest first
        }
      }
      if (preempt_for.has_value()) {
        preempt_fleet = fleet;
        for (const auto& lease : leases_.Expired(absl::InfiniteFuture())) {
          std::vector<std::string>& workers = running_workers[lease.job_id];
          if (static_cast<int>(workers.size()) <= lease.rank) {
            workers.resize(lease.rank + 1);
          }
          workers[lease.rank] = lease.worker_id;
        }
      }
    }
    plan_time_ = now;
    planned_changes_ = seen;
    for (const auto& u : plan.unplaceable) {
      if (warned_unplaceable_.insert(u.job_id).second) {
        unplaceable.emplace_back(u.job_id, u.reason);
      }
    }
  }
  if (preempt_for.has_value()) {
    MaybePreempt(*preempt_for, preempt_fleet, running_workers, now);
  }
  for (const auto& [job_id, reason] : unplaceable) {
    v1::JobEvent e;
    e.set_level("warn");
    e.set_type("message");
    e.set_message(absl::StrCat("No connected worker can run this job (", reason,
                               "); it stays queued until one joins"));
    auto st = store_.AppendEvent(job_id, e, 0, 0);
    if (!st.ok())
      spdlog::warn("event for {}: {}", job_id, st.status().ToString());
  }
  return absl::OkStatus();
}

absl::Status Coordinator::MaybeAssign(const v1::WorkerReport& r,
                                      v1::WorkerDirective& out) {
  absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    if (AssignCommitted(r.worker_id(), now, out)) return absl::OkStatus();
  }
  RETURN_IF_ERROR(RefreshPlan(now));
  std::string job_id;
  std::vector<std::string> workers;  // by rank
  bool packed = false;               // beside the worker's other jobs
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(r.worker_id());
    if (it == pending_.end()) return absl::OkStatus();
    job_id = it->second.job_id;
    packed = it->second.packed;
    auto planned = planned_.find(job_id);
    if (planned != planned_.end()) workers = std::move(planned->second);
    // The whole gang leaves the plan: no other member starts it again.
    for (const std::string& w : workers) pending_.erase(w);
    planned_.erase(job_id);
    // It starts on all its workers or not at all: one that left or was
    // taken since the plan was made sends it back to the next plan.
    for (const std::string& w : workers) {
      auto f = fleet_.find(w);
      // A packed job joins a worker that still has a free slot.
      const bool free =
          f != fleet_.end() &&
          (f->second.idle ||
           (packed && workers.size() == 1 &&
            static_cast<int>(f->second.running.size()) < f->second.max_attempts));
      if (w.empty() || !free || committed_.contains(w)) {
        PlanIsStale();
        return absl::OkStatus();
      }
    }
    if (workers.empty()) return absl::OkStatus();
    for (const std::string& w : workers) {
      committed_[w] = job_id;
      fleet_[w].idle = false;
    }
    starting_.insert(job_id);
  }
  // Off the plan until its leases are granted (or the start failed: then
  // its members are free again); runs once the job's lock is released.
  bool started = false;
  absl::Cleanup done = [&] {
    absl::MutexLock lock(&mu_);
    starting_.erase(job_id);
    if (started) return;
    for (const std::string& w : workers) {
      auto c = committed_.find(w);
      if (c == committed_.end() || c->second != job_id) continue;
      committed_.erase(c);
      // A packed job's worker trains its other jobs still.
      if (auto f = fleet_.find(w); f != fleet_.end() && !packed) f->second.idle = true;
    }
    PlanIsStale();
  };
  JobLocks::Lock job_lock = job_locks_.Acquire(job_id);
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  // Everything the assignment reads, before the attempt starts: once it
  // has, nothing may fail before its leases are granted.
  v1::Assignment as;
  ASSIGN_OR_RETURN(*as.mutable_model(), store_.GetModel(job.model()));
  as.set_model_path(as.model().path());
  for (const std::string& input : job.method().merge().inputs()) {
    ASSIGN_OR_RETURN(*as.add_merge_inputs(), store_.GetModel(input));
  }
  ASSIGN_OR_RETURN(auto checkpoints, store_.ListCheckpoints(job.id()));
  if (!checkpoints.empty()) *as.mutable_resume_from() = checkpoints.back();
  int32_t attempt = job.attempt() + 1;
  store::TransitionUpdate u;
  u.attempt = attempt;
  u.worker_id = workers[0];
  if (workers.size() == 1) {
    u.message = absl::StrCat("Job started on worker ", workers[0], " (attempt ",
                             attempt, ")");
  } else {
    std::vector<std::string> ranks;
    for (size_t i = 0; i < workers.size(); ++i) {
      ranks.push_back(absl::StrCat(workers[i], " (rank ", i, ")"));
    }
    u.message = absl::StrCat("Job started on ", workers.size(),
                             " workers: ", absl::StrJoin(ranks, ", "),
                             " (attempt ", attempt, ")");
  }
  auto moved = store_.Transition(job.id(), v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_RUNNING, job.attempt(), u);
  if (absl::IsFailedPrecondition(moved.status())) {
    return absl::OkStatus();  // cancelled or taken since the plan was made
  }
  ASSIGN_OR_RETURN(job, std::move(moved));
  FillJobDefaults(job, options_.job_defaults);  // no-op but for older records
  as.set_job_id(job.id());
  as.set_attempt(attempt);
  *as.mutable_job() = job;
  as.set_rank(0);
  as.set_world_size(static_cast<int32_t>(workers.size()));
  {
    absl::MutexLock lock(&mu_);
    started = true;
    warned_unplaceable_.erase(job.id());
    absl::erase_if(held_,
                   [&](const auto& h) { return h.second.job_id == job.id(); });
    // Every rank's lease from now: a member that never reports fails the
    // attempt.
    for (size_t rank = 0; rank < workers.size(); ++rank) {
      leases_.Grant(job.id(), attempt, workers[rank], now,
                    static_cast<int>(rank));
    }
    Gang& gang = gangs_[job.id()] =
        Gang{.attempt = attempt, .workers = workers, .assignment = as};
    // Until its worker's next report lists it, the plan counts it there.
    if (auto f = fleet_.find(workers[0]);
        f != fleet_.end() && workers.size() == 1 && f->second.max_attempts > 1) {
      f->second.running.push_back(RunningOn(job));
    }
    if (r.worker_id() == workers[0]) SendAssignment(job.id(), gang, 0, out);
  }
  spdlog::info("assigned {} (attempt {}, project {}) to worker{} {}", job.id(),
               attempt, job.project(), workers.size() > 1 ? "s" : "",
               absl::StrJoin(workers, ", "));
  return absl::OkStatus();
}

bool Coordinator::AssignCommitted(const std::string& worker_id, absl::Time now,
                                  v1::WorkerDirective& out) {
  auto c = committed_.find(worker_id);
  if (c == committed_.end()) return false;
  const std::string job_id = c->second;
  auto g = gangs_.find(job_id);
  if (g == gangs_.end()) return true;  // its attempt is being started
  Gang& gang = g->second;
  const int rank = static_cast<int>(
      std::find(gang.workers.begin(), gang.workers.end(), worker_id) -
      gang.workers.begin());
  if (rank == static_cast<int>(gang.workers.size())) {
    committed_.erase(c);  // not of this gang's attempt: free
    return false;
  }
  if (!leases_.Renew(job_id, gang.attempt, now, rank)) {
    leases_.Grant(job_id, gang.attempt, worker_id, now, rank);
  }
  // Rank 0 hosts the rendezvous; the others join it once it is known.
  if (rank == 0 || !gang.rendezvous.empty()) {
    SendAssignment(job_id, gang, rank, out);
  }
  return true;
}

void Coordinator::SendAssignment(const std::string& job_id, Gang& gang,
                                 int rank, v1::WorkerDirective& out) {
  v1::Assignment& as = *out.mutable_assignment();
  as = gang.assignment;
  as.set_rank(rank);
  if (rank > 0) as.set_rendezvous(gang.rendezvous);
  committed_.erase(gang.workers[rank]);
  if (auto lease = leases_.Get(job_id, rank)) {
    out.set_lease_deadline_ms(absl::ToUnixMillis(lease->deadline));
  }
}

void Coordinator::WorkerDisconnected(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  fleet_.erase(worker_id);
  held_.erase(worker_id);
  // A gang planned on it cannot start: none of its workers takes it. (A
  // committed member keeps its place: its lease decides.)
  if (auto p = pending_.find(worker_id); p != pending_.end()) {
    const std::string job_id = p->second.job_id;
    for (const std::string& w : planned_[job_id]) pending_.erase(w);
    planned_.erase(job_id);
    pending_.erase(worker_id);
  }
  PlanIsStale();
}

absl::Status Coordinator::CheckCurrentAttempt(const std::string& job_id,
                                              int32_t attempt) {
  JobLocks::Lock job_lock = job_locks_.Acquire(job_id);
  return CheckCurrentAttemptLocked(job_id, attempt);
}

absl::Status Coordinator::CheckCurrentAttemptLocked(const std::string& job_id,
                                                    int32_t attempt) {
  // Read under the job's lock: a job read before it could have lost its
  // lease since.
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  if (job.attempt() != attempt || !AttemptIsLiveNow(job)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "attempt ", attempt, " of ", job_id, " is not current (job is ",
        StatusName(job.status()), ", attempt ", job.attempt(), ")"));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::RecordResultFile(const std::string& job_id,
                                           int32_t attempt,
                                           int64_t checkpoint_step,
                                           const v1::ResultFile& file) {
  JobLocks::Lock job_lock = job_locks_.Acquire(job_id);
  RETURN_IF_ERROR(CheckCurrentAttemptLocked(job_id, attempt));
  if (checkpoint_step > 0) {
    return store_.PutCheckpointFile(job_id, checkpoint_step, attempt, file);
  }
  return store_.PutResultFile(job_id, file);
}

bool Coordinator::AttemptIsLive(const v1::Job& job) {
  if (IsLive(job.status())) return true;
  // A paused job's attempt lives until it has checkpointed and stopped.
  auto lease = leases_.Get(job.id());
  return job.status() == v1::JOB_STATUS_PAUSED && lease &&
         lease->attempt == job.attempt();
}

bool Coordinator::AttemptIsLiveNow(const v1::Job& job) {
  absl::MutexLock lock(&mu_);
  return AttemptIsLive(job);
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const std::string& id) {
  // Under the job's lock nothing else moves the job: the compare-and-set
  // below finds it as it was read.
  JobLocks::Lock job_lock = job_locks_.Acquire(id);
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(id));
  store::TransitionUpdate u;
  switch (job.status()) {
    case v1::JOB_STATUS_VALIDATING_FILES:
    case v1::JOB_STATUS_QUEUED:
    case v1::JOB_STATUS_PAUSED:
      u.message = "The job was cancelled";
      return store_.Transition(id, job.status(), v1::JOB_STATUS_CANCELLED,
                               std::nullopt, u);
    case v1::JOB_STATUS_RUNNING:
      u.message = "Cancellation requested; stopping the worker";
      return store_.Transition(id, job.status(), v1::JOB_STATUS_CANCELLING,
                               std::nullopt, u);
    case v1::JOB_STATUS_CANCELLING:
      return job;
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " is already ", StatusName(job.status())));
  }
}

absl::StatusOr<v1::Job> Coordinator::PauseJob(const std::string& job_id) {
  JobLocks::Lock job_lock = job_locks_.Acquire(job_id);
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  if (job.status() == v1::JOB_STATUS_PAUSED && job.resume_requested()) {
    // Paused again before the resume took effect: it stays paused.
    return store_.SetResumeRequested(
        job_id, job.attempt(), false,
        "Pause requested again; the pending resume is cancelled");
  }
  if (job.status() != v1::JOB_STATUS_QUEUED &&
      job.status() != v1::JOB_STATUS_RUNNING) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is ", StatusName(job.status()),
                     "; only queued or running jobs can be paused"));
  }
  store::TransitionUpdate u;
  u.message = job.status() == v1::JOB_STATUS_RUNNING
                  ? "Pause requested: the worker checkpoints and stops"
                  : "Paused";
  auto moved = store_.Transition(job_id, job.status(), v1::JOB_STATUS_PAUSED,
                                 std::nullopt, u);
  if (moved.ok()) {
    absl::MutexLock lock(&mu_);
    PlanIsStale();
  }
  return moved;
}

absl::StatusOr<v1::Job> Coordinator::ResumeJob(const std::string& job_id) {
  JobLocks::Lock job_lock = job_locks_.Acquire(job_id);
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  if (job.status() != v1::JOB_STATUS_PAUSED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is ", StatusName(job.status()), ", not paused"));
  }
  if (AttemptIsLiveNow(job)) {
    // The attempt is still writing its pause checkpoint: the job is
    // queued as soon as that lands (DecideOutcome), or its worker is lost.
    return store_.SetResumeRequested(job_id, job.attempt(), true,
                                     "Resume requested; the job is queued once "
                                     "its pause checkpoint is written");
  }
  store::TransitionUpdate u;
  u.message = "Resumed; the job is queued";
  auto moved = store_.Transition(job_id, v1::JOB_STATUS_PAUSED,
                                 v1::JOB_STATUS_QUEUED, std::nullopt, u);
  absl::MutexLock lock(&mu_);
  PlanIsStale();
  return moved;
}

absl::StatusOr<absl::flat_hash_map<std::string, int64_t>>
Coordinator::QueuePositions(const std::string& project) {
  ASSIGN_OR_RETURN(store::Store::SchedulerInput in,
                   store_.ReadSchedulerInput());
  std::vector<scheduler::JobRequest> jobs = SchedulerQueue(in.queued);
  absl::flat_hash_map<std::string, int> running_per_project(
      in.running_per_project.begin(), in.running_per_project.end());
  absl::flat_hash_map<std::string, std::string> project_of;
  for (const auto& q : in.queued) project_of[q.job_id] = q.project;
  absl::flat_hash_map<std::string, int64_t> out;
  for (const std::string& id : scheduler::RankOrder(
           jobs, running_per_project, options_.policy, absl::Now())) {
    // Only the project's own jobs are counted: how many jobs other
    // projects have queued is not theirs to see.
    if (project_of[id] == project)
      out[id] = static_cast<int64_t>(out.size()) + 1;
  }
  return out;
}

absl::Status Coordinator::FillQueuePosition(v1::Job& job) {
  // The job was read before the queue: a job placed (or cancelled) in
  // between is missing from the queue, and is then read again, so that a
  // job shown as queued always has its place. Assignments are not under
  // one lock with reads any more; a few rounds settle it.
  for (int round = 0; round < 3; ++round) {
    job.set_queue_position(0);
    if (job.status() != v1::JOB_STATUS_QUEUED) return absl::OkStatus();
    ASSIGN_OR_RETURN(auto positions, QueuePositions(job.project()));
    if (auto it = positions.find(job.id()); it != positions.end()) {
      job.set_queue_position(it->second);
      return absl::OkStatus();
    }
    absl::StatusOr<v1::Job> now = store_.GetJob(job.id());
    if (!now.ok()) return absl::OkStatus();  // deleted: shown as it was read
    job = *std::move(now);
  }
  return absl::OkStatus();
}

int Coordinator::SweepExpiredLeases(absl::Time now) {
  std::vector<scheduler::LeaseTable::Lease> due;
  {
    absl::MutexLock lock(&mu_);
    due = leases_.Expired(now);
  }
  int expired = 0;
  for (const auto& lease : due) {
    // Taken under the job's lock, so that no report of the attempt is
    // between its decision and its write; one that came since Expired()
    // renewed the lease, and the worker is alive.
    JobLocks::Lock job_lock = job_locks_.Acquire(lease.job_id);
    {
      absl::MutexLock lock(&mu_);
      if (!leases_.TakeIfExpired(lease.job_id, lease.attempt, now,
                                 lease.rank)) {
        continue;
      }
      PlanIsStale();
    }
    ++expired;
    ExpireAttempt(lease, now);
  }
  return expired;
}

void Coordinator::ExpireAttempt(const scheduler::LeaseTable::Lease& lease,
                                absl::Time now) {
  auto job = store_.GetJob(lease.job_id);
  if (!job.ok() || job->attempt() != lease.attempt) return;
  LoseRank(*job, lease.rank, lease.worker_id, nullptr, now);
}

store::Store::AttemptReport::StatusChange Coordinator::AttemptFailed(
    const v1::Job& job, int rank, const std::string& worker_id,
    const v1::JobError* failure, absl::Time now) const {
  const std::string who = WorkerOfRank(job, worker_id, rank);
  const std::string what =
      failure == nullptr
          ? absl::StrCat(who, " stopped reporting (lease expired)")
          : absl::StrCat(who, " failed: ", failure->message());
  store::Store::AttemptReport::StatusChange change{.from = job.status()};
  store::TransitionUpdate& u = change.update;
  u.level = "warn";
  // Only failures count against max_attempts: pauses and hand-backs
  // started new attempts too.
  const int failures = job.failed_attempts() + 1;
  u.count_failure = job.status() != v1::JOB_STATUS_CANCELLING;
  if (failure != nullptr && failure->user_fault()) {
    // The job's own fault (its data, its settings): another attempt would
    // fail the same way.
    change.to = v1::JOB_STATUS_FAILED;
    u.count_failure = false;
    u.error = *failure;
    u.level = "error";
    u.message = absl::StrCat("The job failed: ", what);
  } else if (job.status() == v1::JOB_STATUS_CANCELLING) {
    change.to = v1::JOB_STATUS_CANCELLED;
    u.message =
        failure == nullptr
            ? "Worker lost while cancelling; the job is cancelled"
            : absl::StrCat(what, " while cancelling; the job is cancelled");
  } else if (failures >= options_.max_attempts &&
             job.status() != v1::JOB_STATUS_PAUSED) {
    v1::JobError err;
    if (failure == nullptr) {
      err.set_code("worker_lost");
      err.set_message(absl::StrCat("the worker stopped reporting ", failures,
                                   " times (--max_attempts ",
                                   options_.max_attempts, ")"));
      if (WorldSize(job) > 1) {
        absl::StrAppend(err.mutable_message(), "; last worker ", worker_id,
                        " (rank ", rank, ")");
      }
      err.set_user_fault(false);
    } else {
      err = *failure;
      if (err.code().empty()) err.set_code("worker_failed");
      err.set_message(absl::StrCat(
          "rank ", rank, " (worker ", worker_id,
          ") failed: ", failure->message(), " (", failures,
          " failed attempts, --max_attempts ", options_.max_attempts, ")"));
    }
    change.to = v1::JOB_STATUS_FAILED;
    u.error = err;
    u.level = "error";
    u.message = absl::StrCat("The job failed: ", err.message());
  } else {
    // A paused job gets here only when a resume waits: it is queued
    // whatever its failures, since the user asked for it.
    absl::Duration delay = scheduler::RetryBackoff(
        failures, options_.retry_backoff_base, options_.retry_backoff_cap);
    change.to = v1::JOB_STATUS_QUEUED;
    u.not_before_ms = absl::ToUnixMillis(now + delay);
    u.message =
        absl::StrCat(what, "; attempt ", job.attempt(), " failed (", failures,
                     " of ", options_.max_attempts, " allowed), retrying in ",
                     absl::FormatDuration(delay));
  }
  return change;
}

void Coordinator::LoseRank(const v1::Job& job, int rank,
                           const std::string& worker_id,
                           const v1::JobError* failure, absl::Time now) {
  // Only a live attempt moves the job: a late lease of a job that has
  // finished or been requeued since never does. What is left of the
  // attempt (a job cancelled while paused) goes.
  if (!IsLive(job.status()) && job.status() != v1::JOB_STATUS_PAUSED) {
    absl::MutexLock lock(&mu_);
    EndAttempt(job.id(), job.attempt());
    return;
  }
  if (job.status() == v1::JOB_STATUS_PAUSED) {
    // Rank 0 alone writes the pause checkpoint: another rank lost
    // meanwhile does not end the attempt.
    if (rank > 0) return;
    // The worker died while pausing: the job stays paused, unless a resume
    // was asked for meanwhile; then it is queued (AttemptFailed).
    if (!job.resume_requested()) {
      absl::MutexLock lock(&mu_);
      EndAttempt(job.id(), job.attempt());
      return;
    }
  }
  const store::Store::AttemptReport::StatusChange change =
      AttemptFailed(job, rank, worker_id, failure, now);
  absl::StatusOr<v1::Job> moved = store_.Transition(
      job.id(), change.from, change.to, job.attempt(), change.update);
  if (!moved.ok()) {
    // The other ranks' leases stay: one of them expiring tries again.
    spdlog::warn("{}: {}", change.update.message, moved.status().ToString());
    return;
  }
  absl::MutexLock lock(&mu_);
  EndAttempt(job.id(), job.attempt());
  PlanIsStale();
}

void Coordinator::EndAttempt(const std::string& job_id, int32_t attempt) {
  leases_.Release(job_id);
  preempting_.erase(job_id);
  auto g = gangs_.find(job_id);
  if (g == gangs_.end() || g->second.attempt != attempt) return;
  for (const std::string& w : g->second.workers) {
    auto c = committed_.find(w);
    if (c == committed_.end() || c->second != job_id) continue;
    committed_.erase(c);
    if (auto f = fleet_.find(w); f != fleet_.end()) f->second.idle = true;
    PlanIsStale();
  }
  gangs_.erase(g);
}

void Coordinator::ConsiderPreemption(absl::Time now) {
  if (!options_.preemption) return;
  {
    // An idle worker's reports plan rounds; with no worker at all there is
    // nothing to preempt.
    absl::MutexLock lock(&mu_);
    if (fleet_.empty()) return;
    for (const auto& [id, w] : fleet_) {
      if (w.idle && !committed_.contains(id)) return;
    }
  }
  if (auto st = RefreshPlan(now); !st.ok()) {
    spdlog::warn("planning for preemption: {}", st.ToString());
  }
}

void Coordinator::SetStopIfPreempted(const v1::Job& job, int32_t attempt,
                                     v1::WorkerDirective& out) {
  if (job.status() != v1::JOB_STATUS_RUNNING) return;
  absl::MutexLock lock(&mu_);
  auto p = preempting_.find(job.id());
  if (p == preempting_.end() || p->second.attempt != attempt) return;
  out.set_stop(true);
  out.set_checkpoint_before_stop(true);
  out.set_stop_reason(absl::StrCat("preempted by ", p->second.by));
}

void Coordinator::MaybePreempt(
    const scheduler::JobRequest& job,
    const std::vector<scheduler::WorkerInfo>& fleet,
    const absl::flat_hash_map<std::string, std::vector<std::string>>& running,
    absl::Time now) {
  auto jobs = store_.JobsInStatus(v1::JOB_STATUS_RUNNING);
  if (!jobs.ok()) {
    spdlog::warn("preemption for {}: {}", job.job_id, jobs.status().ToString());
    return;
  }
  std::vector<scheduler::RunningJob> candidates;
  absl::flat_hash_map<std::string, v1::Job> by_id;
  {
    absl::MutexLock lock(&mu_);
    for (v1::Job& j : *jobs) {
      auto workers = running.find(j.id());
      if (workers == running.end()) continue;  // no lease: not this lathed's yet
      scheduler::RunningJob r;
      r.job_id = j.id();
      r.priority = SchedulerPriority(j.priority());
      r.worker_ids = workers->second;
      // The attempt's start: the newest started lose the least work.
      r.started_at = absl::FromUnixSeconds(j.started_at());
      if (auto t = last_preempted_.find(j.id()); t != last_preempted_.end()) {
        r.last_preempted = t->second;
      }
      candidates.push_back(std::move(r));
      by_id[j.id()] = std::move(j);
    }
  }
  std::optional<scheduler::PreemptionPlan> plan = scheduler::PlanPreemption(
      job, fleet, candidates, options_.preemption_grace, now);
  if (!plan.has_value()) return;
  std::vector<std::string> stopped;
  for (const std::string& victim : plan->victims) {
    JobLocks::Lock victim_lock = job_locks_.Acquire(victim);
    auto current = store_.GetJob(victim);
    if (!current.ok() || current->status() != v1::JOB_STATUS_RUNNING ||
        current->attempt() != by_id[victim].attempt()) {
      continue;  // finished, paused or requeued since: nothing to stop
    }
    v1::JobEvent e;
    e.set_type("message");
    e.set_level("warn");
    e.set_message(absl::StrCat(
        "Preempted by ", job.job_id, " (", PriorityName(job.priority),
        " priority, needs ", job.devices, job.devices > 1 ? " workers" : " worker",
        "): the job checkpoints and hands its worker", 
        current->devices() > 1 ? "s" : "", " back, then waits in its place in the queue"));
    if (auto st = store_.AppendEvent(victim, e, 0, 0); !st.ok()) {
      spdlog::warn("event for {}: {}", victim, st.status().ToString());
    }
    absl::MutexLock lock(&mu_);
    preempting_[victim] = {job.job_id, current->attempt()};
    last_preempted_[victim] = now;
    stopped.push_back(victim);
  }
  if (stopped.empty()) return;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& w : plan->workers) {
      held_[w] = {job.job_id, now + options_.preemption_hold};
    }
    PlanIsStale();
  }
  spdlog::info("preempting {} for {}", absl::StrJoin(stopped, ", "), job.job_id);
  v1::JobEvent e;
  e.set_type("message");
  e.set_level("info");
  e.set_message(absl::StrCat("No worker is free: preempting ",
                             absl::StrJoin(stopped, ", "),
                             " (lower priority) to run this job"));
  if (auto st = store_.AppendEvent(job.job_id, e, 0, 0); !st.ok()) {
    spdlog::warn("event for {}: {}", job.job_id, st.status().ToString());
  }
}

std::vector<scheduler::WorkerInfo> Coordinator::Fleet() {
  absl::MutexLock lock(&mu_);
  std::vector<scheduler::WorkerInfo> out;
  out.reserve(fleet_.size());
  for (const auto& [id, w] : fleet_) out.push_back(w);
  return out;
}

}  // namespace lathe
