#include "scheduler/placement.h"

#include <algorithm>
#include <array>
#include <functional>
#include <numeric>
#include <optional>
#include <queue>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace lathe::scheduler {
namespace {

constexpr int kNumClasses = 3;
constexpr int kTopClass = static_cast<int>(Priority::kHigh);

using Labels = std::map<std::string, std::string>;

bool HasLabels(const Labels& have, const Labels& want) {
  for (const auto& [key, value] : want) {
    auto it = have.find(key);
    if (it == have.end() || it->second != value) return false;
  }
  return true;
}

// What a job asks of a worker besides memory, as a key for the per-round
// caches: jobs with equal keys accept exactly the same workers.
std::string RequirementKey(const JobRequest& job) {
  std::string key = job.device_kind;
  for (const auto& [name, value] : job.required_labels) {
    key.push_back('\0');
    absl::StrAppend(&key, name, "=", value);
  }
  return key;
}

int EffectiveClass(const JobRequest& job, absl::Duration aging,
                   absl::Time now) {
  const int base = std::clamp(static_cast<int>(job.priority), 0, kTopClass);
  if (aging <= absl::ZeroDuration() || aging == absl::InfiniteDuration()) {
    return base;
  }
  const absl::Duration waited = now - job.enqueued_at;
  int level = base;
  for (absl::Duration rise = aging; level < kTopClass && waited >= rise;
       rise += aging) {
    ++level;
  }
  return level;
}

// Whether `job` may join other jobs on its base (rule 7).
bool CanShare(const JobRequest& job) {
  return job.devices == 1 && job.shared_bytes > 0 && !job.base_id.empty();
}

std::string Gib(int64_t bytes) {
  return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30));
}

// "cuda worker with labels {zone=eu-1}"
std::string DescribeWorkerWanted(const JobRequest& job) {
  std::string out = job.device_kind.empty()
                        ? "worker"
                        : absl::StrCat(job.device_kind, " worker");
  if (!job.required_labels.empty()) {
    absl::StrAppend(
        &out, " with labels {",
        absl::StrJoin(job.required_labels, ", ", absl::PairFormatter("=")),
        "}");
  }
  return out;
}

// The fleet indexed for one round: every worker's capacity, the idle ones
// ordered by capacity for best fit, and the spots where a job can join
// others on its base (rule 7). Borrows `workers`, which must outlive it.
class FleetIndex {
 public:
  explicit FleetIndex(const std::vector<WorkerInfo>& workers)
      : workers_(workers) {
    capacity_.reserve(workers.size());
    for (int i = 0; i < static_cast<int>(workers.size()); ++i) {
      const WorkerInfo& w = workers[i];
      capacity_.push_back(WorkerCapacity(w));
      if (w.idle) {
        idle_by_kind_[capacity_[i].kind].insert({capacity_[i].memory_bytes, i});
        ++idle_count_;
      } else if (!w.running.empty() &&
                 static_cast<int>(w.running.size()) < w.max_attempts) {
        AddSpotIfShared(i);
      }
    }
  }

  bool AnyIdle() const { return idle_count_ > 0; }

  // Whether any job could still be placed: an idle worker or a spot is left.
  bool AnyRoom() const { return idle_count_ > 0 || spot_count_ > 0; }

  // Takes the spot that `job` (REQUIRES: CanShare) fits with the least
  // capacity left after it (ties: the first in the fleet) and returns its
  // worker, or -1 if none fits.
  int TakeSpot(const JobRequest& job) {
    auto spots = spots_.find(job.base_id);
    if (spots == spots_.end()) return -1;
    std::vector<Spot>& list = spots->second;
    auto best = list.end();
    int64_t best_left = 0;
    for (auto it = list.begin(); it != list.end(); ++it) {
      const int64_t left =
          capacity_[it->worker].memory_bytes -
          SpotNeed(*it, job.shared_bytes, job.memory_bytes - job.shared_bytes);
      if (left < 0 || !Accepts(job, it->worker)) continue;
      if (best == list.end() || left < best_left ||
          (left == best_left && it->worker < best->worker)) {
        best = it;
        best_left = left;
      }
    }
    if (best == list.end()) return -1;
    const int worker = best->worker;
    best->base_bytes = std::max(best->base_bytes, job.shared_bytes);
    best->own_bytes += job.memory_bytes - job.shared_bytes;
    if (++best->attempts >= workers_[worker].max_attempts) {
      list.erase(best);
      --spot_count_;
    }
    return worker;
  }

  // Records that the idle worker `worker` was given `job`: if the job can
  // share and the worker runs more than one attempt, it is now a spot for
  // the job's base.
  void Given(const JobRequest& job, int worker) {
    if (!CanShare(job) || workers_[worker].max_attempts <= 1) return;
    spots_[job.base_id].push_back(
        {worker, 1, job.shared_bytes, job.memory_bytes - job.shared_bytes});
    ++spot_count_;
  }

  // The largest capacity among the workers, idle or busy, that have the
  // kind and labels `job` asks for (`key` is its RequirementKey), or -1 if
  // none has.
  int64_t MaxCapacity(const JobRequest& job, const std::string& key) {
    auto [it, inserted] = max_capacity_.try_emplace(key, -1);
    if (inserted) {
      for (size_t i = 0; i < workers_.size(); ++i) {
        if (Accepts(job, i)) {
          it->second = std::max(it->second, capacity_[i].memory_bytes);
        }
      }
    }
    return it->second;
  }

  // How many workers, idle or busy, have the kind and labels `job` asks for
  // and at least its memory: a binary search in the capacities of the
  // workers with that key, sorted once per round.
  int CountFitting(const JobRequest& job, const std::string& key) {
    auto [it, inserted] = capacities_.try_emplace(key);
    if (inserted) {
      for (size_t i = 0; i < workers_.size(); ++i) {
        if (Accepts(job, i)) it->second.push_back(capacity_[i].memory_bytes);
      }
      std::sort(it->second.begin(), it->second.end());
    }
    const std::vector<int64_t>& sorted = it->second;
    return static_cast<int>(sorted.end() - std::lower_bound(sorted.begin(),
                                                            sorted.end(),
                                                            job.memory_bytes));
  }

  // The smallest need with `key` known to find no idle worker, if any.
  std::optional<int64_t> UnmetNeed(const std::string& key) const {
    auto it = smallest_unmet_need_.find(key);
    if (it == smallest_unmet_need_.end()) return std::nullopt;
    return it->second;
  }

  // Undoes TakeBestFit calls made with `key` only: puts `taken` back in the
  // idle set and `key`'s unmet need back to `unmet_before` (what UnmetNeed
  // said before them). Every other key's cache was made with those workers
  // idle, so it is still right.
  void Return(const std::vector<int>& taken, const std::string& key,
              std::optional<int64_t> unmet_before) {
    for (int index : taken) {
      idle_by_kind_[capacity_[index].kind].insert(
          {capacity_[index].memory_bytes, index});
      ++idle_count_;
    }
    if (unmet_before) {
      smallest_unmet_need_[key] = *unmet_before;
    } else {
      smallest_unmet_need_.erase(key);
    }
  }

  // Removes from the idle set and returns the smallest idle worker that
  // fits `job` (ties: the first in the fleet), or -1 if none does.
  int TakeBestFit(const JobRequest& job, const std::string& key) {
    // The idle set only shrinks during a round, so a need that found no
    // worker stays unmet, and so does any larger one with the same key.
    auto unmet = smallest_unmet_need_.find(key);
    if (unmet != smallest_unmet_need_.end() &&
        job.memory_bytes >= unmet->second) {
      return -1;
    }
    IdleSet* best_set = nullptr;
    IdleSet::iterator best;
    auto consider = [&](IdleSet& idle) {
      for (auto it = idle.lower_bound({job.memory_bytes, -1}); it != idle.end();
           ++it) {
        if (best_set != nullptr && *best < *it) return;
        if (HasLabels(workers_[it->second].labels, job.required_labels)) {
          best_set = &idle;
          best = it;
          return;
        }
      }
    };
    if (job.device_kind.empty()) {
      for (auto& [kind, idle] : idle_by_kind_) consider(idle);
    } else if (auto it = idle_by_kind_.find(job.device_kind);
               it != idle_by_kind_.end()) {
      consider(it->second);
    }
    if (best_set == nullptr) {
      auto [it, inserted] =
          smallest_unmet_need_.try_emplace(key, job.memory_bytes);
      if (!inserted) it->second = std::min(it->second, job.memory_bytes);
      return -1;
    }
    const int index = best->second;
    best_set->erase(best);
    --idle_count_;
    return index;
  }

 private:
  // (capacity, index in the fleet), smallest first.
  using IdleSet = std::set<std::pair<int64_t, int>>;

  // A busy worker with a free slot whose every attempt shares one base.
  struct Spot {
    int worker;          // index in the fleet
    int attempts;        // running + given in this round
    int64_t base_bytes;  // the base, once: the largest shared_bytes of them
    int64_t own_bytes;   // the sum of their memory_bytes - shared_bytes
  };

  // The memory `spot` needs once a job sharing `shared` bytes of its base
  // and needing `own` more joins it.
  static int64_t SpotNeed(const Spot& spot, int64_t shared, int64_t own) {
    return std::max(spot.base_bytes, shared) + spot.own_bytes + own;
  }

  // Makes the busy worker `i` a spot if every attempt it runs can share,
  // and on one base.
  void AddSpotIfShared(int i) {
    const std::vector<RunningAttempt>& running = workers_[i].running;
    Spot spot{i, 0, 0, 0};
    for (const RunningAttempt& a : running) {
      if (a.shared_bytes <= 0 || a.base_id.empty() ||
          a.base_id != running.front().base_id) {
        return;
      }
      ++spot.attempts;
      spot.base_bytes = std::max(spot.base_bytes, a.shared_bytes);
      spot.own_bytes += a.memory_bytes - a.shared_bytes;
    }
    spots_[running.front().base_id].push_back(spot);
    ++spot_count_;
  }

  bool Accepts(const JobRequest& job, size_t i) const {
    return (job.device_kind.empty() || capacity_[i].kind == job.device_kind) &&
           HasLabels(workers_[i].labels, job.required_labels);
  }

  const std::vector<WorkerInfo>& workers_;
  std::vector<Device> capacity_;  // by index in the fleet
  std::map<std::string, IdleSet> idle_by_kind_;
  int idle_count_ = 0;
  // base_id -> its spots with a free slot.
  absl::flat_hash_map<std::string, std::vector<Spot>> spots_;
  int spot_count_ = 0;
  // Both keyed by RequirementKey.
  absl::flat_hash_map<std::string, int64_t> max_capacity_;
  absl::flat_hash_map<std::string, int64_t> smallest_unmet_need_;
  // RequirementKey -> the capacities of the workers it accepts, sorted.
  absl::flat_hash_map<std::string, std::vector<int64_t>> capacities_;
};

// One project's eligible jobs, by effective class, each list in enqueue
// order; plus its fair-share standing.
struct ProjectQueue {
  std::array<std::vector<int>, kNumClasses> jobs;  // indexes into the queue
  double weight = 1;
  int64_t jobs_running = 0;  // running before the round + placed in it
  double Share() const { return static_cast<double>(jobs_running) / weight; }
};

// A project's next job in one class, as a heap entry: the heap's top is
// the next job in rank order within that class.
struct Head {
  double share;
  int64_t enqueue_order;
  int job;  // index into the queue: the final tie-break
  int project;
  size_t position;  // of `job` in the project's list

  bool operator>(const Head& o) const {
    if (share != o.share) return share > o.share;
    if (enqueue_order != o.enqueue_order) {
      return enqueue_order > o.enqueue_order;
    }
    return job > o.job;
  }
};

}  // namespace

Device WorkerCapacity(const WorkerInfo& worker) {
  const Device* largest = nullptr;
  for (const Device& d : worker.devices) {
    if (largest == nullptr || d.memory_bytes > largest->memory_bytes) {
      largest = &d;
    }
  }
  return largest == nullptr ? Device{} : *largest;
}

namespace {

// The eligible jobs of `queue` (`eligible(i)`), sorted into per-project,
// per-class lists, each in enqueue order.
std::vector<ProjectQueue> ProjectQueues(
    const std::vector<JobRequest>& queue,
    const absl::flat_hash_map<std::string, int>& running_per_project,
    const SchedulingPolicy& policy, absl::Time now,
    const std::function<bool(int)>& eligible) {
  // Queue indexes in enqueue order (the store usually hands them over so),
  // so that each project's lists below come out in enqueue order too.
  std::vector<int> order(queue.size());
  std::iota(order.begin(), order.end(), 0);
  auto earlier = [&queue](int a, int b) {
    return std::pair(queue[a].enqueue_order, a) <
           std::pair(queue[b].enqueue_order, b);
  };
  if (!std::is_sorted(order.begin(), order.end(), earlier)) {
    std::sort(order.begin(), order.end(), earlier);
  }
  std::vector<ProjectQueue> projects;
  absl::flat_hash_map<std::string_view, int> project_of;
  for (int i : order) {
    const JobRequest& job = queue[i];
    if (!eligible(i)) continue;
    auto [it, inserted] =
        project_of.try_emplace(job.project, static_cast<int>(projects.size()));
    if (inserted) {
      ProjectQueue& p = projects.emplace_back();
      if (auto w = policy.project_weights.find(job.project);
          w != policy.project_weights.end()) {
        p.weight = w->second;
      }
      if (auto r = running_per_project.find(job.project);
          r != running_per_project.end()) {
        p.jobs_running = r->second;
      }
    }
    const int job_class = EffectiveClass(job, policy.aging, now);
    projects[it->second].jobs[job_class].push_back(i);
  }
  return projects;
}

// Offers the jobs of `projects` in rank order (class, then fair share,
// then enqueue order) while `more()`; `offer(job)` returns how many workers
// the job was placed on (0: not placed), which raise its project's share.
void OfferInRankOrder(const std::vector<JobRequest>& queue,
                      std::vector<ProjectQueue>& projects,
                      const std::function<bool()>& more,
                      const std::function<int(int)>& offer) {
  for (int c = kTopClass; c >= 0 && more(); --c) {
    std::priority_queue<Head, std::vector<Head>, std::greater<Head>> heads;
    auto push = [&](int project, size_t position) {
      const std::vector<int>& jobs = projects[project].jobs[c];
      if (position >= jobs.size()) return;
      const int job = jobs[position];
      heads.push({projects[project].Share(), queue[job].enqueue_order, job,
                  project, position});
    };
    for (int p = 0; p < static_cast<int>(projects.size()); ++p) push(p, 0);
    while (!heads.empty() && more()) {
      const Head head = heads.top();
      heads.pop();
      projects[head.project].jobs_running += offer(head.job);
      push(head.project, head.position + 1);
    }
  }
}

}  // namespace

RoundPlan PlanRound(
    const std::vector<JobRequest>& queue, const std::vector<WorkerInfo>& fleet,
    const absl::flat_hash_map<std::string, int>& running_per_project,
    const SchedulingPolicy& policy, absl::Time now) {
  RoundPlan plan;
  FleetIndex index(fleet);
  std::vector<std::string> keys(queue.size());
  // Unplaceable jobs are reported in enqueue order.
  std::vector<int> order(queue.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&queue](int a, int b) {
    return queue[a].enqueue_order < queue[b].enqueue_order;
  });
  std::vector<bool> eligible(queue.size(), false);
  for (int i : order) {
    const JobRequest& job = queue[i];
    keys[i] = RequirementKey(job);
    const int64_t max_capacity = index.MaxCapacity(job, keys[i]);
    if (job.devices > 1 && max_capacity >= job.memory_bytes) {
      const int fitting = index.CountFitting(job, keys[i]);
      if (fitting < job.devices) {
        plan.unplaceable.push_back(
            {job.job_id,
             absl::StrCat("needs ", job.devices, " ", DescribeWorkerWanted(job),
                          "s with ", Gib(job.memory_bytes),
                          " of device memory each; ", fitting,
                          fitting == 1 ? " is" : " are", " connected")});
        continue;
      }
    }
    if (max_capacity < job.memory_bytes) {
      plan.unplaceable.push_back(
          {job.job_id,
           max_capacity < 0
               ? absl::StrCat("no ", DescribeWorkerWanted(job), " is connected")
               : absl::StrCat("needs ", Gib(job.memory_bytes),
                              " of device memory; the largest ",
                              DescribeWorkerWanted(job), " has ",
                              Gib(max_capacity))});
      continue;
    }
    eligible[i] = job.not_before <= now;
  }
  std::vector<ProjectQueue> projects =
      ProjectQueues(queue, running_per_project, policy, now,
                    [&](int i) { return eligible[i]; });
  OfferInRankOrder(
      queue, projects, [&] { return index.AnyRoom(); },
      [&](int job) {
        const JobRequest& request = queue[job];
        if (CanShare(request)) {
          // Beside jobs on its base first: that leaves idle workers to
          // jobs that cannot join anyone.
          if (const int worker = index.TakeSpot(request); worker >= 0) {
            plan.placements.push_back(
                {request.job_id, fleet[worker].worker_id, 0, /*packed=*/true});
            return 1;
          }
        }
        // Only spots are left: nothing for this job to take or hold.
        if (!index.AnyIdle()) return 0;
        if (request.devices <= 1) {
          const int worker = index.TakeBestFit(request, keys[job]);
          if (worker < 0) return 0;
          index.Given(request, worker);
          plan.placements.push_back(
              {request.job_id, fleet[worker].worker_id, 0});
          return 1;
        }
        // A gang: all of its workers in this round, or none.
        const std::optional<int64_t> unmet_before = index.UnmetNeed(keys[job]);
        std::vector<int> taken;
        while (static_cast<int>(taken.size()) < request.devices) {
          const int worker = index.TakeBestFit(request, keys[job]);
          if (worker < 0) break;
          taken.push_back(worker);
        }
        if (static_cast<int>(taken.size()) == request.devices) {
          for (int r = 0; r < request.devices; ++r) {
            plan.placements.push_back(
                {request.job_id, fleet[taken[r]].worker_id, r});
          }
          return request.devices;
        }
        if (plan.reserved.empty()) {
          // The highest-ranked gang waiting: what it found stays idle for it.
          Reservation& held = plan.reserved.emplace_back();
          held.job_id = request.job_id;
          for (int w : taken) held.worker_ids.push_back(fleet[w].worker_id);
        } else {
          index.Return(taken, keys[job], unmet_before);
        }
        return 0;
      });
  return plan;
}

std::vector<std::string> RankOrder(
    const std::vector<JobRequest>& queue,
    const absl::flat_hash_map<std::string, int>& running_per_project,
    const SchedulingPolicy& policy, absl::Time now) {
  std::vector<std::string> out;
  out.reserve(queue.size());
  std::vector<ProjectQueue> projects =
      ProjectQueues(queue, running_per_project, policy, now,
                    [&](int i) { return queue[i].not_before <= now; });
  OfferInRankOrder(
      queue, projects, [] { return true; },
      [&](int job) {
        out.push_back(queue[job].job_id);
        return 1;
      });
  // Jobs waiting out a retry backoff come last, in enqueue order.
  std::vector<int> waiting;
  for (int i = 0; i < static_cast<int>(queue.size()); ++i) {
    if (queue[i].not_before > now) waiting.push_back(i);
  }
  std::stable_sort(waiting.begin(), waiting.end(), [&queue](int a, int b) {
    return queue[a].enqueue_order < queue[b].enqueue_order;
  });
  for (int i : waiting) out.push_back(queue[i].job_id);
  return out;
}

namespace {

// Who runs where, as preemption sees it, on the busy workers of `fleet`
// for which `counts` holds.
struct Occupancy {
  // By index in the fleet: indexes into `running` of the jobs on it, those
  // that list it and those its WorkerInfo::running lists.
  std::vector<std::vector<int>> jobs_on;
  // By index into `running`: the workers it is on (fleet indexes), in the
  // order its worker_ids and then the fleet list them.
  std::vector<std::vector<int>> workers_of;
  // By index in the fleet: it lists an attempt that `running` does not.
  std::vector<bool> unknown;
};

Occupancy OccupancyOf(const std::vector<WorkerInfo>& fleet,
                      const std::vector<RunningJob>& running,
                      const std::function<bool(const WorkerInfo&)>& counts) {
  Occupancy out;
  out.jobs_on.resize(fleet.size());
  out.workers_of.resize(running.size());
  out.unknown.assign(fleet.size(), false);
  auto add = [&out](int job, int worker) {
    std::vector<int>& jobs = out.jobs_on[worker];
    if (std::find(jobs.begin(), jobs.end(), job) != jobs.end()) return;
    jobs.push_back(job);
    out.workers_of[job].push_back(worker);
  };
  absl::flat_hash_map<std::string_view, int> worker_index;
  for (int i = 0; i < static_cast<int>(fleet.size()); ++i) {
    if (!fleet[i].idle && counts(fleet[i]))
      worker_index[fleet[i].worker_id] = i;
  }
  absl::flat_hash_map<std::string_view, int> job_index;
  for (int k = 0; k < static_cast<int>(running.size()); ++k) {
    job_index[running[k].job_id] = k;
    for (const std::string& id : running[k].worker_ids) {
      if (auto it = worker_index.find(id); it != worker_index.end()) {
        add(k, it->second);
      }
    }
  }
  for (int i = 0; i < static_cast<int>(fleet.size()); ++i) {
    if (fleet[i].idle || !counts(fleet[i])) continue;
    for (const RunningAttempt& a : fleet[i].running) {
      if (auto it = job_index.find(a.job_id); it != job_index.end()) {
        add(it->second, i);
      } else {
        out.unknown[i] = true;
      }
    }
  }
  return out;
}

}  // namespace

std::optional<PreemptionPlan> PlanPreemption(
    const JobRequest& job, const std::vector<WorkerInfo>& fleet,
    const std::vector<RunningJob>& running, absl::Duration grace,
    absl::Time now) {
  auto fits = [&job](const WorkerInfo& w) {
    const Device d = WorkerCapacity(w);
    return d.memory_bytes >= job.memory_bytes &&
           (job.device_kind.empty() || d.kind == job.device_kind) &&
           HasLabels(w.labels, job.required_labels);
  };
  const int need = std::max(1, job.devices);
  PreemptionPlan plan;
  for (const WorkerInfo& w : fleet) {
    if (w.idle && fits(w)) plan.workers.push_back(w.worker_id);
  }
  if (static_cast<int>(plan.workers.size()) >= need) return std::nullopt;
  auto can_stop = [&](const RunningJob& r) {
    return static_cast<int>(r.priority) < static_cast<int>(job.priority) &&
           (r.last_preempted == absl::InfinitePast() ||
            now - r.last_preempted >= grace);
  };
  const Occupancy occupancy = OccupancyOf(fleet, running, fits);
  const std::vector<std::vector<int>>& on = occupancy.jobs_on;
  const std::vector<std::vector<int>>& workers_of = occupancy.workers_of;
  // A worker is freed once every job on it stops: it can be if each can.
  std::vector<bool> freeable(fleet.size(), false);
  for (int i = 0; i < static_cast<int>(fleet.size()); ++i) {
    freeable[i] = !occupancy.unknown[i] && !on[i].empty() &&
                  std::all_of(on[i].begin(), on[i].end(),
                              [&](int k) { return can_stop(running[k]); });
  }
  std::vector<bool> victim(running.size(), false);
  std::vector<bool> freed(fleet.size(), false);
  // The workers that `extra` victims would free besides those freed.
  auto would_free = [&](const std::vector<int>& extra) {
    std::vector<int> out;
    for (int k : extra) {
      for (int w : workers_of[k]) {
        if (!freeable[w] || freed[w] ||
            std::find(out.begin(), out.end(), w) != out.end()) {
          continue;
        }
        if (std::all_of(on[w].begin(), on[w].end(), [&](int j) {
              return victim[j] ||
                     std::find(extra.begin(), extra.end(), j) != extra.end();
            })) {
          out.push_back(w);
        }
      }
    }
    return out;
  };
  // Freeing one worker: the victims it takes besides those taken.
  struct Step {
    std::vector<int> victims;  // latest started first, then by id
    std::vector<int> frees;    // the workers they free, it among them
    absl::Duration lost;       // the time they have run, summed
    std::string_view first_id;
    // Fewest victims, most workers freed, least work lost, smallest id.
    auto Key() const {
      return std::tuple(victims.size(), -static_cast<int64_t>(frees.size()),
                        lost, first_id);
    }
  };
  while (static_cast<int>(plan.workers.size()) < need) {
    std::optional<Step> best;
    for (int w = 0; w < static_cast<int>(fleet.size()); ++w) {
      if (!freeable[w] || freed[w]) continue;
      Step step;
      for (int k : on[w]) {
        if (!victim[k]) step.victims.push_back(k);
      }
      std::sort(step.victims.begin(), step.victims.end(), [&](int a, int b) {
        if (running[a].started_at != running[b].started_at) {
          return running[a].started_at > running[b].started_at;
        }
        return running[a].job_id < running[b].job_id;
      });
      step.frees = would_free(step.victims);
      step.lost = absl::ZeroDuration();
      step.first_id = running[step.victims.front()].job_id;
      for (int k : step.victims) {
        step.lost += now - running[k].started_at;
        step.first_id =
            std::min<std::string_view>(step.first_id, running[k].job_id);
      }
      if (!best || step.Key() < best->Key()) best = std::move(step);
    }
    if (!best) return std::nullopt;
    for (int k : best->victims) {
      victim[k] = true;
      plan.victims.push_back(running[k].job_id);
    }
    for (int w : best->frees) {
      freed[w] = true;
      plan.workers.push_back(fleet[w].worker_id);
    }
  }
  plan.workers.resize(need);
  return plan;
}

}  // namespace lathe::scheduler
