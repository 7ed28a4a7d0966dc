// scheduler_bench: places a queue of 10,000 jobs from 50 projects onto
// 1,000 simulated workers with PlanRound until the queue drains, and prints
// how fast it decides. Deterministic (fixed seed); not a test. 5% of the
// jobs are data-parallel gangs of 2 to 8 workers (placed all at once or
// not at all, the highest-ranked waiting gang holding idle workers).
// Priority preemption is in the mix: after each round, the first waiting
// high-priority job gets a PlanPreemption call, and when it returns a plan
// its victims hand their workers back (requeued with the time they had
// left, not preempted again within a 10-minute grace) and it starts.
//
// The simulation: every worker starts idle; each placed job runs 10 to 120
// simulated minutes. It is run twice:
//   batched    every minute, one PlanRound call offers all the workers freed
//              in that minute;
//   per event  one PlanRound call per worker that finishes (the server
//              deciding as each worker reports idle).
// A "decision" is one placement. Per call the bench measures the wall time
// of PlanRound (which indexes the whole queue and fleet every call);
// "time per decision" is a call's time divided by the placements it made.
//
// Usage: scheduler_bench [seed] [gang_percent (default 5)]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "scheduler/placement.h"

namespace lathe::scheduler {
namespace {

constexpr int kWorkers = 1000;
constexpr int kJobs = 10000;
constexpr int kProjects = 50;
constexpr int64_t kGB = 1'000'000'000;

struct Scenario {
  std::vector<WorkerInfo> fleet;
  std::vector<JobRequest> queue;
  std::vector<int> minutes;  // run time of each job, by index in queue
};

Scenario MakeScenario(uint32_t seed, int gang_percent, absl::Time start) {
  std::mt19937 rng(seed);
  auto uniform = [&rng](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  Scenario s;
  // 40% 24 GB, 25% 40 GB, 25% 80 GB, 10% 141 GB; a fifth in zone "eu".
  for (int i = 0; i < kWorkers; ++i) {
    const int r = uniform(0, 99);
    const int64_t gb = r < 40 ? 24 : r < 65 ? 40 : r < 90 ? 80 : 141;
    WorkerInfo w{
        absl::StrFormat("worker-%04d", i), {{"cuda", gb * kGB}}, {}, true};
    w.labels["zone"] = uniform(0, 4) == 0 ? "eu" : "us";
    s.fleet.push_back(std::move(w));
  }
  // Projects skewed: project p submits in proportion to 1 / (p + 1).
  std::vector<double> project_weights;
  for (int p = 0; p < kProjects; ++p) project_weights.push_back(1.0 / (p + 1));
  std::discrete_distribution<int> project(project_weights.begin(),
                                          project_weights.end());
  for (int i = 0; i < kJobs; ++i) {
    JobRequest job;
    job.job_id = absl::StrFormat("ftjob-%05d", i);
    job.project = absl::StrFormat("proj-%02d", project(rng));
    const int prio = uniform(0, 9);
    job.priority = prio < 2   ? Priority::kLow
                   : prio < 8 ? Priority::kNormal
                              : Priority::kHigh;
    // Half small (8-20 GB), a quarter mid (20-38), 15% large (38-75), 10%
    // huge (75-135); 0.3% more than any worker has.
    const int size = uniform(0, 999);
    const int gb = size < 500   ? uniform(8, 20)
                   : size < 750 ? uniform(20, 38)
                   : size < 900 ? uniform(38, 75)
                   : size < 997 ? uniform(75, 135)
                                : 200;
    job.memory_bytes = gb * kGB;
    job.device_kind = "cuda";
    if (uniform(0, 9) == 0) job.required_labels["zone"] = "eu";
    job.enqueue_order = i;
    job.enqueued_at = start - absl::Seconds(uniform(0, 3600));
    if (uniform(0, 49) == 0) job.not_before = start + absl::Minutes(5);
    if (uniform(0, 99) < gang_percent) {
      job.devices = uniform(2, 8);
      job.memory_bytes = uniform(8, 75) * kGB;  // per rank
    }
    s.queue.push_back(std::move(job));
    s.minutes.push_back(uniform(10, 120));
  }
  return s;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// Runs the simulation; `batch` offers all workers freed in a minute at once,
// otherwise one call per finishing worker.
void Simulate(const Scenario& scenario, absl::Time start, bool batch) {
  std::vector<WorkerInfo> fleet = scenario.fleet;
  std::vector<JobRequest> queue = scenario.queue;
  absl::flat_hash_map<std::string, int> minutes_of;
  for (size_t i = 0; i < queue.size(); ++i) {
    minutes_of[queue[i].job_id] = scenario.minutes[i];
  }
  absl::flat_hash_map<std::string, int> worker_index;
  for (size_t i = 0; i < fleet.size(); ++i)
    worker_index[fleet[i].worker_id] = i;
  // (finish time, worker, project) of each running job's every worker,
  // earliest first; an entry whose worker has since been given to another
  // job (after a preemption) is stale and skipped.
  struct Running {
    absl::Time finish;
    int worker;
    std::string project;
    uint64_t generation;
    bool operator>(const Running& o) const {
      return std::tie(finish, worker) > std::tie(o.finish, o.worker);
    }
  };
  std::vector<uint64_t> generation(fleet.size(), 0);
  // The running jobs, for PlanPreemption.
  struct Run {
    JobRequest job;
    std::vector<int> workers;
    absl::Time started, finish;
  };
  absl::flat_hash_map<std::string, Run> runs;
  absl::flat_hash_map<std::string, std::string> job_on_worker;
  absl::flat_hash_map<std::string, absl::Time> last_preempted;
  const absl::Duration grace = absl::Minutes(10);
  std::priority_queue<Running, std::vector<Running>, std::greater<Running>>
      running;
  absl::flat_hash_map<std::string, int> running_per_project;
  const SchedulingPolicy policy;

  std::vector<double> call_ms, per_decision_ms, preempt_ms;
  int64_t preemptions = 0, victims = 0;
  double total_ms = 0;
  int64_t decisions = 0, unplaceable = 0, empty_calls = 0, gangs = 0;
  int64_t reserving_calls = 0;
  absl::Time now = start;
  while (!queue.empty()) {
    auto t0 = std::chrono::steady_clock::now();
    RoundPlan plan = PlanRound(queue, fleet, running_per_project, policy, now);
    auto t1 = std::chrono::steady_clock::now();
    const double ms =
        std::chrono::duration<double, std::milli>(t1 - t0).count();
    total_ms += ms;
    call_ms.push_back(ms);
    if (plan.placements.empty()) ++empty_calls;
    for (size_t i = 0; i < plan.placements.size(); ++i) {
      per_decision_ms.push_back(ms / plan.placements.size());
    }
    decisions += plan.placements.size();
    unplaceable += plan.unplaceable.size();
    if (!plan.reserved.empty()) ++reserving_calls;

    // Apply the plan: the server would fail the unplaceable jobs and start
    // the placed ones.
    // job -> its workers (none: unplaceable)
    absl::flat_hash_map<std::string, std::vector<std::string>> started;
    for (const Placement& p : plan.placements) {
      started[p.job_id].push_back(p.worker_id);
    }
    // Preemption: the first waiting high-priority job that this round
    // left queued (and could run somewhere: not unplaceable).
    absl::flat_hash_map<std::string, bool> unplaceable_now;
    for (const Unplaceable& u : plan.unplaceable) unplaceable_now[u.job_id] = true;
    std::vector<JobRequest> requeued;
    for (const JobRequest& job : queue) {
      if (job.priority != Priority::kHigh || started.contains(job.job_id) ||
          unplaceable_now.contains(job.job_id) || job.not_before > now) {
        continue;
      }
      std::vector<RunningJob> running_jobs;
      running_jobs.reserve(runs.size());
      for (const auto& [id, r] : runs) {
        RunningJob rj{.job_id = id, .priority = r.job.priority,
                      .started_at = r.started};
        for (int w : r.workers) rj.worker_ids.push_back(fleet[w].worker_id);
        if (auto it = last_preempted.find(id); it != last_preempted.end()) {
          rj.last_preempted = it->second;
        }
        running_jobs.push_back(std::move(rj));
      }
      // This round's placements hold their workers already.
      std::vector<WorkerInfo> free_fleet = fleet;
      for (const auto& [id, workers] : started) {
        for (const std::string& w : workers) free_fleet[worker_index[w]].idle = false;
      }
      const auto p0 = std::chrono::steady_clock::now();
      std::optional<PreemptionPlan> preempt =
          PlanPreemption(job, free_fleet, running_jobs, grace, now);
      preempt_ms.push_back(std::chrono::duration<double, std::milli>(
                               std::chrono::steady_clock::now() - p0)
                               .count());
      if (preempt.has_value()) {
        ++preemptions;
        for (const std::string& victim : preempt->victims) {
          ++victims;
          Run& r = runs[victim];
          for (int w : r.workers) {
            fleet[w].idle = true;
            ++generation[w];
            job_on_worker.erase(fleet[w].worker_id);
            --running_per_project[r.job.project];
          }
          // Back in the queue (its place: its enqueue order) with the time
          // it had left.
          minutes_of[victim] = std::max<int>(
              1, static_cast<int>(absl::ToInt64Minutes(r.finish - now)));
          last_preempted[victim] = now;
          requeued.push_back(r.job);
          runs.erase(victim);
        }
        started[job.job_id] = preempt->workers;
      }
      break;
    }
    for (const Unplaceable& u : plan.unplaceable) started[u.job_id];
    std::vector<JobRequest> rest;
    rest.reserve(queue.size());
    for (JobRequest& job : queue) {
      auto it = started.find(job.job_id);
      if (it == started.end()) {
        rest.push_back(std::move(job));
      } else {
        if (it->second.empty()) continue;  // unplaceable: dropped
        if (it->second.size() > 1) ++gangs;
        Run& r = runs[job.job_id];
        r.job = job;
        r.started = now;
        r.finish = now + absl::Minutes(minutes_of[job.job_id]);
        for (const std::string& worker : it->second) {
          const int w = worker_index[worker];
          fleet[w].idle = false;
          ++generation[w];
          job_on_worker[worker] = job.job_id;
          r.workers.push_back(w);
          ++running_per_project[job.project];
          running.push({r.finish, w, job.project, generation[w]});
        }
      }
    }
    for (JobRequest& job : requeued) rest.push_back(std::move(job));
    std::sort(rest.begin(), rest.end(), [](const JobRequest& a, const JobRequest& b) {
      return a.enqueue_order < b.enqueue_order;
    });
    queue = std::move(rest);
    auto stale = [&](const Running& r) { return r.generation != generation[r.worker]; };
    while (!running.empty() && stale(running.top())) running.pop();
    if (queue.empty() || running.empty()) break;

    // Advance to the next finish (per event) or to the end of the next
    // minute that has a finish (batched), freeing the workers.
    now = running.top().finish;
    if (batch) now = start + absl::Ceil(now - start, absl::Minutes(1));
    do {
      const Running done = running.top();
      running.pop();
      if (stale(done)) continue;  // its job was preempted
      fleet[done.worker].idle = true;
      --running_per_project[done.project];
      const std::string& wid = fleet[done.worker].worker_id;
      if (auto it = job_on_worker.find(wid); it != job_on_worker.end()) {
        runs.erase(it->second);
        job_on_worker.erase(it);
      }
    } while (!running.empty() &&
             (stale(running.top()) || (batch && running.top().finish <= now)));
  }
  std::printf(
      "%s\n"
      "  PlanRound calls         %zu (%lld placed nothing)\n"
      "  decisions (placements)  %lld; unplaceable reported %lld; left %zu\n"
      "  gangs placed            %lld; calls with a gang holding workers %lld\n"
      "  preemptions             %lld (%lld jobs handed back); PlanPreemption "
      "p50 %.3f ms, p99 %.3f ms\n"
      "  time in PlanRound       %.3f s\n"
      "  decisions/s             %.0f\n"
      "  time per decision       p50 %.3f ms, p99 %.3f ms\n"
      "  time per call           p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
      batch ? "batched: one call per simulated minute, all freed workers"
            : "per event: one call per worker that finishes",
      call_ms.size(), static_cast<long long>(empty_calls),
      static_cast<long long>(decisions), static_cast<long long>(unplaceable),
      queue.size(), static_cast<long long>(gangs),
      static_cast<long long>(reserving_calls),
      static_cast<long long>(preemptions), static_cast<long long>(victims),
      Percentile(preempt_ms, 0.5), Percentile(preempt_ms, 0.99),
      total_ms / 1000,
      decisions / (total_ms / 1000), Percentile(per_decision_ms, 0.5),
      Percentile(per_decision_ms, 0.99), Percentile(call_ms, 0.5),
      Percentile(call_ms, 0.99), Percentile(call_ms, 1.0));
}

}  // namespace
}  // namespace lathe::scheduler

int main(int argc, char** argv) {
  using namespace lathe::scheduler;
  const uint32_t seed = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1;
  const absl::Time start = absl::FromUnixSeconds(1'800'000'000);
  const int gang_percent = argc > 2 ? std::atoi(argv[2]) : 5;
  const Scenario scenario = MakeScenario(seed, gang_percent, start);
  std::printf(
      "scheduler_bench: %d jobs from %d projects, %d workers "
      "(24/40/80/141 GB), %d%% gangs of 2-8 workers, seed %u\n",
      kJobs, kProjects, kWorkers, gang_percent, seed);
  Simulate(scenario, start, /*batch=*/true);
  Simulate(scenario, start, /*batch=*/false);
  return 0;
}
