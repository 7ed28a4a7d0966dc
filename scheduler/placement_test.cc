#include "scheduler/placement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace lathe::scheduler {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr int64_t kGiB = int64_t{1} << 30;
const absl::Time kNow = absl::FromUnixSeconds(1'000'000);

WorkerInfo Gpu(std::string id, int64_t gib, bool idle = true,
               std::map<std::string, std::string> labels = {}) {
  return {std::move(id), {{"cuda", gib * kGiB}}, std::move(labels), idle};
}

JobRequest Job(std::string id, int64_t order, int64_t need_gib = 1,
               std::string project = "p") {
  JobRequest job;
  job.job_id = std::move(id);
  job.project = std::move(project);
  job.memory_bytes = need_gib * kGiB;
  job.enqueue_order = order;
  job.enqueued_at = kNow;
  return job;
}

// "job@worker" for each placement, in decision order.
std::vector<std::string> Placed(const RoundPlan& plan) {
  std::vector<std::string> out;
  for (const Placement& p : plan.placements) {
    out.push_back(p.job_id + (p.rank > 0 ? "#" + std::to_string(p.rank) : "") +
                  "@" + p.worker_id);
  }
  return out;
}

RoundPlan Plan(const std::vector<JobRequest>& queue,
               const std::vector<WorkerInfo>& fleet,
               const absl::flat_hash_map<std::string, int>& running = {},
               const SchedulingPolicy& policy = {}, absl::Time now = kNow) {
  return PlanRound(queue, fleet, running, policy, now);
}

TEST(WorkerCapacityTest, LargestDevice) {
  WorkerInfo w{"w", {{"cpu", 64 * kGiB}, {"cuda", 80 * kGiB}}, {}, true};
  EXPECT_EQ(WorkerCapacity(w).kind, "cuda");
  EXPECT_EQ(WorkerCapacity(w).memory_bytes, 80 * kGiB);
  EXPECT_EQ(WorkerCapacity(WorkerInfo{}).memory_bytes, 0);
}

TEST(PlanRoundTest, BestFitAndNeverTooSmall) {
  std::vector<WorkerInfo> fleet = {Gpu("w80", 80), Gpu("w24", 24),
                                   Gpu("w40", 40)};
  EXPECT_THAT(Placed(Plan({Job("j30", 1, 30)}, fleet)), ElementsAre("j30@w40"));
  EXPECT_THAT(Placed(Plan({Job("j24", 1, 24)}, fleet)),
              ElementsAre("j24@w24"));  // an exact fit fits
  // The 40 is taken first, so the second 30 must go to the 80, not the 24.
  EXPECT_THAT(Placed(Plan({Job("a", 1, 30), Job("b", 2, 30)}, fleet)),
              ElementsAre("a@w40", "b@w80"));
}

TEST(PlanRoundTest, DeviceKind) {
  std::vector<WorkerInfo> fleet = {{"cpu", {{"cpu", 256 * kGiB}}, {}, true},
                                   Gpu("gpu", 24)};
  JobRequest cuda = Job("cuda30", 1, 30);
  cuda.device_kind = "cuda";
  JobRequest any = Job("any30", 2, 30);
  RoundPlan plan = Plan({cuda, any}, fleet);
  EXPECT_THAT(Placed(plan), ElementsAre("any30@cpu"));
  ASSERT_EQ(plan.unplaceable.size(), 1u);
  EXPECT_EQ(plan.unplaceable[0].job_id, "cuda30");
  EXPECT_EQ(plan.unplaceable[0].reason,
            "needs 30.0 GiB of device memory; the largest cuda worker has "
            "24.0 GiB");
}

TEST(PlanRoundTest, RequiredLabels) {
  std::vector<WorkerInfo> fleet = {
      Gpu("plain", 24), Gpu("eu", 80, true, {{"zone", "eu"}, {"tier", "a"}})};
  JobRequest eu = Job("eu", 1, 10);
  eu.required_labels = {{"zone", "eu"}};
  JobRequest us = Job("us", 2, 10);
  us.required_labels = {{"zone", "us"}};
  RoundPlan plan = Plan({eu, us}, fleet);
  EXPECT_THAT(Placed(plan), ElementsAre("eu@eu"));
  ASSERT_EQ(plan.unplaceable.size(), 1u);
  EXPECT_EQ(plan.unplaceable[0].job_id, "us");
  EXPECT_EQ(plan.unplaceable[0].reason,
            "no worker with labels {zone=us} is connected");
}

TEST(PlanRoundTest, HigherClassFirst) {
  JobRequest low = Job("low", 1);
  low.priority = Priority::kLow;
  JobRequest normal = Job("normal", 2);
  JobRequest high = Job("high", 3);
  high.priority = Priority::kHigh;
  EXPECT_THAT(Placed(Plan({low, normal, high}, {Gpu("w", 24)})),
              ElementsAre("high@w"));
  EXPECT_THAT(Placed(Plan({low, normal, high}, {Gpu("w1", 24), Gpu("w2", 24)})),
              ElementsAre("high@w1", "normal@w2"));
}

TEST(PlanRoundTest, AgingRaisesOneClassPerPeriod) {
  SchedulingPolicy policy;
  policy.aging = absl::Minutes(10);
  JobRequest low = Job("low", 1, 1, "a");
  low.priority = Priority::kLow;
  low.enqueued_at = kNow;
  JobRequest high = Job("high", 2, 1, "b");
  high.priority = Priority::kHigh;
  auto winner = [&](absl::Time now) {
    high.enqueued_at = now;  // a fresh high job each time
    return Placed(Plan({low, high}, {Gpu("w", 24)}, {}, policy, now));
  };
  EXPECT_THAT(winner(kNow + absl::Minutes(19)), ElementsAre("high@w"));
  // Risen to kHigh; it ties on class and share and was queued first.
  EXPECT_THAT(winner(kNow + absl::Minutes(20)), ElementsAre("low@w"));
  policy.aging = absl::InfiniteDuration();
  EXPECT_THAT(winner(kNow + absl::Hours(100)), ElementsAre("high@w"));
}

TEST(PlanRoundTest, AgingStopsAtHighSoOldJobsStillShareFairly) {
  // Both have aged to kHigh; however much older "a"'s job is, fair share
  // decides between them, and "a" already runs a job.
  JobRequest old = Job("old", 1, 1, "a");
  old.enqueued_at = kNow - absl::Hours(10);
  JobRequest newer = Job("newer", 2, 1, "b");
  newer.enqueued_at = kNow - absl::Minutes(10);
  EXPECT_THAT(Placed(Plan({old, newer}, {Gpu("w", 24)}, {{"a", 1}})),
              ElementsAre("newer@w"));
}

TEST(PlanRoundTest, AgingEndsStarvationUnderAStreamOfHighJobs) {
  // One worker frees each minute, and each minute a new high job arrives.
  JobRequest low = Job("low", 0, 1, "a");
  low.priority = Priority::kLow;
  std::vector<JobRequest> queue = {low};
  int placed_at = -1;
  for (int minute = 0; minute < 60 && placed_at < 0; ++minute) {
    absl::Time now = kNow + absl::Minutes(minute);
    JobRequest high = Job("high" + std::to_string(minute), minute + 1, 1, "b");
    high.priority = Priority::kHigh;
    high.enqueued_at = now;
    queue.push_back(high);
    RoundPlan plan = Plan(queue, {Gpu("w", 24)}, {}, {}, now);
    ASSERT_EQ(plan.placements.size(), 1u);
    const std::string id = plan.placements[0].job_id;
    if (id == "low") placed_at = minute;
    std::erase_if(queue, [&](const JobRequest& j) { return j.job_id == id; });
  }
  EXPECT_EQ(placed_at, 20);
}

TEST(PlanRoundTest, SmallProjectIsNotStarvedByABigOne) {
  std::vector<JobRequest> queue;
  for (int i = 0; i < 100; ++i) {
    queue.push_back(Job("a" + std::to_string(i), i, 1, "a"));
  }
  queue.push_back(Job("b0", 100, 1, "b"));
  EXPECT_THAT(Placed(Plan(queue, {Gpu("w1", 24), Gpu("w2", 24)})),
              ElementsAre("a0@w1", "b0@w2"));
  // With one job of "a" already running, "b" goes first.
  EXPECT_THAT(Placed(Plan(queue, {Gpu("w1", 24)}, {{"a", 1}})),
              ElementsAre("b0@w1"));
}

TEST(PlanRoundTest, FairShareInterleavesOverRounds) {
  std::vector<JobRequest> queue;
  for (int i = 0; i < 100; ++i) {
    queue.push_back(Job("a" + std::to_string(i), i, 1, "a"));
  }
  for (int i = 0; i < 10; ++i) {
    queue.push_back(Job("b" + std::to_string(i), 100 + i, 1, "b"));
  }
  absl::flat_hash_map<std::string, int> running;
  std::vector<std::string> order;
  for (int round = 0; round < 5; ++round) {
    RoundPlan plan =
        Plan(queue, {Gpu("w1", 24), Gpu("w2", 24), Gpu("w3", 24)}, running);
    for (const Placement& p : plan.placements) {
      order.push_back(p.job_id);
      ++running[p.job_id.substr(0, 1)];
      std::erase_if(queue,
                    [&](const JobRequest& j) { return j.job_id == p.job_id; });
    }
    EXPECT_LE(std::abs(running["a"] - running["b"]), 1) << "round " << round;
  }
  EXPECT_THAT(order, ElementsAre("a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3",
                                 "a4", "b4", "a5", "b5", "a6", "b6", "a7"));
}

TEST(PlanRoundTest, ProjectWeightsScaleTheShare) {
  std::vector<JobRequest> queue;
  for (int i = 0; i < 10; ++i) {
    queue.push_back(Job("a" + std::to_string(i), i, 1, "a"));
    queue.push_back(Job("b" + std::to_string(i), 10 + i, 1, "b"));
  }
  SchedulingPolicy policy;
  policy.project_weights = {{"b", 3}};
  std::vector<WorkerInfo> fleet;
  for (int i = 0; i < 8; ++i) fleet.push_back(Gpu("w" + std::to_string(i), 24));
  int a = 0;
  for (const Placement& p : Plan(queue, fleet, {}, policy).placements) {
    a += p.job_id[0] == 'a';
  }
  EXPECT_EQ(a, 2);  // 2 : 6
}

TEST(PlanRoundTest, SmallJobPassesABigOneWaitingForABigWorker) {
  std::vector<WorkerInfo> fleet = {Gpu("big", 80, /*idle=*/false),
                                   Gpu("small", 24)};
  std::vector<JobRequest> queue = {Job("big-job", 1, 60),
                                   Job("small-job", 2, 10)};
  RoundPlan plan = Plan(queue, fleet);
  EXPECT_THAT(Placed(plan), ElementsAre("small-job@small"));
  EXPECT_THAT(plan.unplaceable, IsEmpty());  // it waits; it is not failed
}

TEST(PlanRoundTest, BigWorkerFreedGoesToTheWaitingBigJob) {
  // The big job waited; now the big worker is free, the small one is busy,
  // and small jobs queued behind the big one would fit the big worker too.
  std::vector<WorkerInfo> fleet = {Gpu("small", 24, /*idle=*/false),
                                   Gpu("big", 80)};
  std::vector<JobRequest> queue = {Job("small-1", 3, 10), Job("big-job", 1, 60),
                                   Job("small-2", 4, 10)};
  EXPECT_THAT(Placed(Plan(queue, fleet)), ElementsAre("big-job@big"));
  // Both free: each job gets the worker it needs.
  fleet[0].idle = true;
  EXPECT_THAT(Placed(Plan(queue, fleet)),
              ElementsAre("big-job@big", "small-1@small"));
}

TEST(PlanRoundTest, HigherRankedSmallJobLeavesTheBigWorkerWhenItCan) {
  std::vector<WorkerInfo> fleet = {Gpu("big", 80), Gpu("small", 24)};
  JobRequest small = Job("small-job", 1, 10);
  small.priority = Priority::kHigh;
  EXPECT_THAT(Placed(Plan({small, Job("big-job", 2, 60)}, fleet)),
              UnorderedElementsAre("small-job@small", "big-job@big"));
}

TEST(PlanRoundTest, BackoffDefersAJob) {
  JobRequest retry = Job("retry", 1);
  retry.not_before = kNow + absl::Seconds(30);
  std::vector<JobRequest> queue = {retry, Job("next", 2)};
  EXPECT_THAT(Placed(Plan(queue, {Gpu("w", 24)})), ElementsAre("next@w"));
  EXPECT_THAT(
      Placed(Plan(queue, {Gpu("w", 24)}, {}, {}, kNow + absl::Seconds(30))),
      ElementsAre("retry@w"));
}

TEST(PlanRoundTest, UnplaceableIsReportedWhateverTheBackoffAndBlocksNothing) {
  JobRequest huge = Job("huge", 1, 200);
  huge.not_before = kNow + absl::Hours(1);
  JobRequest huge2 = Job("huge2", 2, 300);
  RoundPlan plan = Plan({huge, huge2, Job("ok", 3, 10)},
                        {Gpu("w", 80, false), Gpu("v", 24)});
  EXPECT_THAT(Placed(plan), ElementsAre("ok@v"));
  ASSERT_EQ(plan.unplaceable.size(), 2u);
  EXPECT_EQ(plan.unplaceable[0].job_id, "huge");
  EXPECT_THAT(plan.unplaceable[0].reason,
              HasSubstr("needs 200.0 GiB of device memory; the largest "
                        "worker has 80.0 GiB"));
  EXPECT_EQ(plan.unplaceable[1].job_id, "huge2");
  EXPECT_EQ(Plan({Job("any", 1)}, {}).unplaceable[0].reason,
            "no worker is connected");
}

TEST(RankOrderTest, PriorityThenFairShareThenAgeThenBackoff) {
  // Project a queued five normal jobs, then b one, then a a high one; a
  // retry of a waits out its backoff. By hand: the high job first (class);
  // then b's job (b runs nothing, a now one); then a's in enqueue order;
  // the backed-off job last.
  std::vector<JobRequest> queue;
  for (int i = 1; i <= 5; ++i)
    queue.push_back(Job("a" + std::to_string(i), i, 1, "a"));
  queue.push_back(Job("b1", 6, 1, "b"));
  JobRequest high = Job("a-high", 7, 1, "a");
  high.priority = Priority::kHigh;
  queue.push_back(high);
  JobRequest retry = Job("a-retry", 0, 1, "a");
  retry.not_before = kNow + absl::Seconds(30);
  queue.push_back(retry);
  EXPECT_THAT(
      RankOrder(queue, {}, {}, kNow),
      ElementsAre("a-high", "b1", "a1", "a2", "a3", "a4", "a5", "a-retry"));
  // With three of b's jobs running, a's go first until a runs as many as
  // b (a-high, a1, a2: three), then the tie goes to the older job (a3).
  EXPECT_THAT(
      RankOrder(queue, {{"b", 3}}, {}, kNow),
      ElementsAre("a-high", "a1", "a2", "a3", "b1", "a4", "a5", "a-retry"));
}

TEST(RankOrderTest, IsTheOrderRoundsPlaceJobsInWhenEverythingFits) {
  std::mt19937 rng(7);
  std::vector<JobRequest> queue;
  for (int i = 0; i < 40; ++i) {
    JobRequest j =
        Job("j" + std::to_string(i), i, 1, "p" + std::to_string(rng() % 4));
    j.priority = static_cast<Priority>(rng() % 3);
    queue.push_back(j);
  }
  absl::flat_hash_map<std::string, int> running = {{"p0", 2}, {"p3", 1}};
  // One idle worker per round, rounds until the queue drains.
  std::vector<std::string> placed;
  std::vector<JobRequest> left = queue;
  while (!left.empty()) {
    RoundPlan plan = Plan(left, {Gpu("w", 24)}, running);
    ASSERT_EQ(plan.placements.size(), 1u);
    const std::string id = plan.placements[0].job_id;
    placed.push_back(id);
    auto it = std::find_if(left.begin(), left.end(),
                           [&](const JobRequest& j) { return j.job_id == id; });
    ++running[it->project];
    left.erase(it);
  }
  EXPECT_EQ(RankOrder(queue, {{"p0", 2}, {"p3", 1}}, {}, kNow), placed);
}

TEST(PlanRoundTest, NoIdleWorkerNoPlacement) {
  EXPECT_THAT(Plan({Job("a", 1)}, {Gpu("w", 24, false)}).placements, IsEmpty());
}

// The policy written as plainly as possible, O(Q^2 * W): the fast
// implementation must decide exactly as this does.
RoundPlan ReferencePlan(const std::vector<JobRequest>& queue,
                        const std::vector<WorkerInfo>& fleet,
                        const absl::flat_hash_map<std::string, int>& running,
                        const SchedulingPolicy& policy, absl::Time now) {
  auto fits = [](const JobRequest& job, const WorkerInfo& w) {
    Device d = WorkerCapacity(w);
    if (d.memory_bytes < job.memory_bytes) return false;
    if (!job.device_kind.empty() && d.kind != job.device_kind) return false;
    for (const auto& [k, v] : job.required_labels) {
      auto it = w.labels.find(k);
      if (it == w.labels.end() || it->second != v) return false;
    }
    return true;
  };
  RoundPlan plan;
  std::vector<int> pending;
  std::vector<int> by_enqueue_order(queue.size());
  std::iota(by_enqueue_order.begin(), by_enqueue_order.end(), 0);
  std::stable_sort(by_enqueue_order.begin(), by_enqueue_order.end(),
                   [&](int a, int b) {
                     return queue[a].enqueue_order < queue[b].enqueue_order;
                   });
  for (int i : by_enqueue_order) {
    int fitting = 0;
    for (const WorkerInfo& w : fleet) fitting += fits(queue[i], w) ? 1 : 0;
    if (fitting < queue[i].devices) {
      plan.unplaceable.push_back({queue[i].job_id, ""});
    } else if (queue[i].not_before <= now) {
      pending.push_back(i);
    }
  }
  auto klass = [&](const JobRequest& j) {
    int64_t waited_periods = (now - j.enqueued_at) / policy.aging;
    return std::min<int64_t>(
        2, static_cast<int>(j.priority) + std::max<int64_t>(0, waited_periods));
  };
  absl::flat_hash_map<std::string, int> count = running;
  auto share = [&](const JobRequest& j) {
    auto w = policy.project_weights.find(j.project);
    return count[j.project] /
           (w == policy.project_weights.end() ? 1.0 : w->second);
  };
  std::vector<bool> idle;
  for (const WorkerInfo& w : fleet) idle.push_back(w.idle);
  while (!pending.empty()) {
    // Nothing is offered once every worker is taken (nor held).
    if (std::none_of(idle.begin(), idle.end(), [](bool b) { return b; })) break;
    auto rank = [&](int i) {
      return std::tuple(-klass(queue[i]), share(queue[i]),
                        queue[i].enqueue_order, i);
    };
    auto next =
        std::min_element(pending.begin(), pending.end(),
                         [&](int a, int b) { return rank(a) < rank(b); });
    const JobRequest& job = queue[*next];
    pending.erase(next);
    int best = -1;
    for (int w = 0; w < static_cast<int>(fleet.size()); ++w) {
      if (!idle[w] || !fits(job, fleet[w])) continue;
      if (best < 0 || WorkerCapacity(fleet[w]).memory_bytes <
                          WorkerCapacity(fleet[best]).memory_bytes) {
        best = w;
      }
    }
    if (job.devices <= 1) {
      if (best < 0) continue;
      idle[best] = false;
      ++count[job.project];
      plan.placements.push_back({job.job_id, fleet[best].worker_id});
      continue;
    }
    // A gang: the best fit N times, all or none; the first gang that
    // cannot be placed keeps what it found idle.
    std::vector<int> taken;
    while (static_cast<int>(taken.size()) < job.devices) {
      int pick = -1;
      for (int w = 0; w < static_cast<int>(fleet.size()); ++w) {
        if (!idle[w] || !fits(job, fleet[w])) continue;
        if (pick < 0 || WorkerCapacity(fleet[w]).memory_bytes <
                            WorkerCapacity(fleet[pick]).memory_bytes) {
          pick = w;
        }
      }
      if (pick < 0) break;
      idle[pick] = false;
      taken.push_back(pick);
    }
    if (static_cast<int>(taken.size()) == job.devices) {
      count[job.project] += job.devices;
      for (int r = 0; r < job.devices; ++r) {
        plan.placements.push_back({job.job_id, fleet[taken[r]].worker_id, r});
      }
    } else if (plan.reserved.empty()) {
      Reservation held{job.job_id, {}};
      for (int w : taken) held.worker_ids.push_back(fleet[w].worker_id);
      plan.reserved.push_back(held);
    } else {
      for (int w : taken) idle[w] = true;
    }
  }
  return plan;
}

TEST(PlanRoundTest, MatchesTheReferenceOnRandomRounds) {
  std::mt19937 rng(42);
  auto pick = [&rng](int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(rng);
  };
  const int64_t sizes_gib[] = {0, 16, 24, 40, 80};
  const char* kinds[] = {"cuda", "cuda", "cpu"};
  const char* zones[] = {"eu", "us"};
  for (int round = 0; round < 300; ++round) {
    std::vector<WorkerInfo> fleet;
    for (int w = 0, n = 1 + pick(12); w < n; ++w) {
      WorkerInfo info;
      info.worker_id = "w" + std::to_string(w);
      for (int d = pick(3); d > 0; --d) {
        info.devices.push_back({kinds[pick(3)], sizes_gib[pick(5)] * kGiB});
      }
      if (pick(3) == 0) info.labels["zone"] = zones[pick(2)];
      if (pick(4) == 0) info.labels["tier"] = "a";
      info.idle = pick(3) != 0;
      fleet.push_back(info);
    }
    std::vector<JobRequest> queue;
    for (int j = 0, n = pick(40); j < n; ++j) {
      JobRequest job = Job("j" + std::to_string(j), pick(20), 1 + pick(90),
                           std::string(1, static_cast<char>('a' + pick(4))));
      job.priority = static_cast<Priority>(pick(3));
      job.enqueued_at = kNow - absl::Minutes(pick(40));
      if (pick(5) == 0) job.not_before = kNow + absl::Seconds(1);
      if (pick(4) == 0) job.device_kind = kinds[pick(3)];
      if (pick(4) == 0) job.required_labels["zone"] = zones[pick(2)];
      if (pick(6) == 0) job.required_labels["tier"] = "a";
      queue.push_back(job);
    }
    absl::flat_hash_map<std::string, int> running = {{"a", pick(3)},
                                                     {"c", pick(3)}};
    SchedulingPolicy policy;
    policy.project_weights = {{"b", 2}, {"d", 0.5}};
    RoundPlan got = PlanRound(queue, fleet, running, policy, kNow);
    RoundPlan want = ReferencePlan(queue, fleet, running, policy, kNow);
    ASSERT_EQ(Placed(got), Placed(want)) << "round " << round;
    ASSERT_EQ(got.unplaceable.size(), want.unplaceable.size());
    for (size_t i = 0; i < got.unplaceable.size(); ++i) {
      EXPECT_EQ(got.unplaceable[i].job_id, want.unplaceable[i].job_id);
    }
  }
}

TEST(GangTest, AllOrNothingAndTheTopGangReserves) {
  auto gang = [](std::string id, int64_t order, int n, int64_t gib = 1) {
    JobRequest j = Job(std::move(id), order, gib);
    j.devices = n;
    return j;
  };
  std::vector<WorkerInfo> four = {Gpu("w1", 24), Gpu("w2", 24), Gpu("w3", 24),
                                  Gpu("w4", 24)};
  // Two gangs of 3 on 4 workers: the first gets 3, the second none (no
  // half gangs) and keeps the 4th idle; the small job behind it waits.
  RoundPlan plan = Plan({gang("a", 1, 3), gang("b", 2, 3), Job("s", 3)}, four);
  EXPECT_THAT(Placed(plan), ElementsAre("a@w1", "a#1@w2", "a#2@w3"));
  ASSERT_EQ(plan.reserved.size(), 1u);
  EXPECT_EQ(plan.reserved[0].job_id, "b");
  EXPECT_THAT(plan.reserved[0].worker_ids, ElementsAre("w4"));
  // A job ranked above the waiting gang is placed before it reserves.
  SchedulingPolicy policy;
  std::vector<JobRequest> q = {gang("b", 2, 3), Job("s", 3)};
  q[1].priority = Priority::kHigh;
  plan = Plan(q, {Gpu("w1", 24), Gpu("w2", 24, false), Gpu("w3", 24, false)});
  EXPECT_THAT(Placed(plan), ElementsAre("s@w1"));
  EXPECT_THAT(plan.reserved, IsEmpty());  // no idle worker left to hold
  // Backfill: a worker the gang cannot use (too small) goes to a small job.
  plan = Plan({gang("big", 1, 2, 40), Job("s", 2)},
              {Gpu("w1", 80), Gpu("w2", 80, false), Gpu("w3", 16)});
  EXPECT_THAT(Placed(plan), ElementsAre("s@w3"));
  ASSERT_EQ(plan.reserved.size(), 1u);
  EXPECT_THAT(plan.reserved[0].worker_ids, ElementsAre("w1"));
  // A second waiting gang holds nothing: what it found goes to others.
  plan = Plan({gang("g1", 1, 4, 60), gang("g2", 2, 2, 10), Job("s", 3)},
              {Gpu("w1", 80), Gpu("w2", 80, false), Gpu("w3", 80, false),
               Gpu("w4", 80, false), Gpu("w5", 24), Gpu("w6", 24, false)});
  ASSERT_EQ(plan.reserved.size(), 1u);
  EXPECT_EQ(plan.reserved[0].job_id, "g1");
  EXPECT_THAT(plan.reserved[0].worker_ids, ElementsAre("w1"));
  EXPECT_THAT(Placed(plan), ElementsAre("s@w5"));  // g2 found only w5
  // A gang larger than every fitting worker of the fleet is unplaceable.
  plan = Plan({gang("huge", 1, 5), Job("s", 2)}, four);
  ASSERT_EQ(plan.unplaceable.size(), 1u);
  EXPECT_EQ(plan.unplaceable[0].job_id, "huge");
  EXPECT_THAT(plan.unplaceable[0].reason, HasSubstr("needs 5 workers"));
  EXPECT_THAT(plan.unplaceable[0].reason, HasSubstr("4 are connected"));
  EXPECT_THAT(Placed(plan), ElementsAre("s@w1"));
}

TEST(GangTest, FairShareCountsEveryRank) {
  JobRequest g = Job("g", 1, 1, "p");
  g.devices = 3;
  RoundPlan plan = Plan({g, Job("p2", 2, 1, "p"), Job("q1", 3, 1, "q"),
                         Job("q2", 4, 1, "q"), Job("q3", 5, 1, "q")},
                        {Gpu("w1", 24), Gpu("w2", 24), Gpu("w3", 24),
                         Gpu("w4", 24), Gpu("w5", 24), Gpu("w6", 24)});
  // After the gang, p runs 3: q's jobs come before p's next.
  EXPECT_THAT(Placed(plan), ElementsAre("g@w1", "g#1@w2", "g#2@w3", "q1@w4",
                                        "q2@w5", "q3@w6"));
}

// A simulated fleet over time: jobs and gangs of random sizes arrive, run
// for a while and free their workers. Whatever the mix, every placed gang
// has all its workers in one round, no worker runs two jobs, and every job
// finishes: nothing deadlocks or starves.
TEST(GangTest, SimulatedFleetNeverDeadlocksOrStarves) {
  for (int seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    auto pick = [&rng](int n) {
      return std::uniform_int_distribution<int>(0, n - 1)(rng);
    };
    const int workers = 4 + pick(5);
    std::vector<WorkerInfo> fleet;
    for (int w = 0; w < workers; ++w)
      fleet.push_back(Gpu("w" + std::to_string(w), 80));
    std::vector<JobRequest> queue;
    const int total = 60;
    for (int j = 0; j < total; ++j) {
      JobRequest job = Job("j" + std::to_string(j), j, 1 + pick(40),
                           std::string(1, static_cast<char>('a' + pick(3))));
      job.devices = pick(3) == 0 ? 2 + pick(workers - 1) : 1;
      queue.push_back(job);
    }
    std::map<std::string, int> ends;        // running job -> round it ends
    std::map<std::string, std::string> on;  // worker -> job
    absl::flat_hash_map<std::string, int> running;
    std::map<std::string, std::string> project;
    for (const auto& j : queue) project[j.job_id] = j.project;
    int finished = 0;
    int round = 0;
    for (; round < 2000 && finished < total; ++round) {
      // Jobs due end, freeing their workers.
      for (auto it = ends.begin(); it != ends.end();) {
        if (it->second > round) {
          ++it;
          continue;
        }
        for (auto& w : fleet) {
          if (on[w.worker_id] == it->first) {
            on[w.worker_id] = "";
            w.idle = true;
            --running[project[it->first]];
          }
        }
        ++finished;
        it = ends.erase(it);
      }
      RoundPlan plan = PlanRound(queue, fleet, running, {}, kNow);
      ASSERT_THAT(plan.unplaceable, IsEmpty());
      ASSERT_LE(plan.reserved.size(), 1u);
      std::map<std::string, int> ranks;
      for (const Placement& p : plan.placements) {
        auto w = std::find_if(
            fleet.begin(), fleet.end(),
            [&](const WorkerInfo& x) { return x.worker_id == p.worker_id; });
        ASSERT_TRUE(w->idle) << "worker " << p.worker_id << " given twice";
        w->idle = false;
        on[p.worker_id] = p.job_id;
        EXPECT_EQ(p.rank, ranks[p.job_id]++);
        ++running[project[p.job_id]];
      }
      for (auto it = queue.begin(); it != queue.end();) {
        if (ranks.count(it->job_id)) {
          ASSERT_EQ(ranks[it->job_id], it->devices)
              << it->job_id << " got part of its gang";
          ends[it->job_id] = round + 1 + pick(6);
          it = queue.erase(it);
        } else {
          ++it;
        }
      }
    }
    EXPECT_EQ(finished, total) << "seed " << seed << ": stuck after " << round
                               << " rounds with " << queue.size() << " queued";
  }
}

TEST(GangTest, MatchesTheReferenceOnRandomRoundsWithGangs) {
  std::mt19937 rng(7);
  auto pick = [&rng](int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(rng);
  };
  const int64_t sizes_gib[] = {16, 24, 40, 80};
  for (int round = 0; round < 300; ++round) {
    std::vector<WorkerInfo> fleet;
    for (int w = 0, n = 1 + pick(10); w < n; ++w) {
      fleet.push_back(
          Gpu("w" + std::to_string(w), sizes_gib[pick(4)], pick(3) != 0));
    }
    std::vector<JobRequest> queue;
    for (int j = 0, n = pick(20); j < n; ++j) {
      JobRequest job = Job("j" + std::to_string(j), pick(20), 1 + pick(60),
                           std::string(1, static_cast<char>('a' + pick(3))));
      job.priority = static_cast<Priority>(pick(3));
      if (pick(3) == 0) job.devices = 2 + pick(4);
      queue.push_back(job);
    }
    RoundPlan got = PlanRound(queue, fleet, {}, {}, kNow);
    RoundPlan want = ReferencePlan(queue, fleet, {}, {}, kNow);
    ASSERT_EQ(Placed(got), Placed(want)) << "round " << round;
    ASSERT_EQ(got.reserved.size(), want.reserved.size()) << "round " << round;
    if (!got.reserved.empty()) {
      EXPECT_EQ(got.reserved[0].job_id, want.reserved[0].job_id);
      EXPECT_EQ(got.reserved[0].worker_ids, want.reserved[0].worker_ids);
    }
    ASSERT_EQ(got.unplaceable.size(), want.unplaceable.size())
        << "round " << round;
  }
}

TEST(PreemptionTest, FewestLowerPriorityVictimsMostRecentFirst) {
  JobRequest high = Job("high", 1, 30);
  high.priority = Priority::kHigh;
  std::vector<WorkerInfo> fleet = {Gpu("w1", 40, false), Gpu("w2", 40, false),
                                   Gpu("w3", 40, false), Gpu("w4", 16, false)};
  auto run = [](std::string id, Priority p, std::vector<std::string> workers,
                int started_min) {
    return RunningJob{std::move(id), p, std::move(workers),
                      kNow - absl::Minutes(started_min)};
  };
  std::vector<RunningJob> running = {
      run("old-low", Priority::kLow, {"w1"}, 60),
      run("new-low", Priority::kLow, {"w2"}, 5),
      run("normal", Priority::kNormal, {"w3"}, 1),
      run("tiny", Priority::kLow, {"w4"}, 1)};  // its worker is too small
  auto plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  // One victim suffices; of the three whose worker fits, the most recently
  // started (any class below high).
  EXPECT_THAT(plan->victims, ElementsAre("normal"));
  EXPECT_THAT(plan->workers, ElementsAre("w3"));
  // Never the same class: a normal job preempts only low ones.
  JobRequest normal = Job("n", 2, 30);
  plan = PlanPreemption(normal, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("new-low"));
  JobRequest low = Job("l", 3, 30);
  low.priority = Priority::kLow;
  EXPECT_FALSE(
      PlanPreemption(low, fleet, running, absl::Minutes(10), kNow).has_value());
}

TEST(PreemptionTest, GangsFreeAllTheirWorkersAndIdleOnesCount) {
  JobRequest gang = Job("g", 1, 30);
  gang.priority = Priority::kHigh;
  gang.devices = 3;
  std::vector<WorkerInfo> fleet = {Gpu("w1", 40), Gpu("w2", 40, false),
                                   Gpu("w3", 40, false), Gpu("w4", 40, false)};
  std::vector<RunningJob> running = {
      {"single", Priority::kLow, {"w4"}, kNow - absl::Minutes(1)},
      {"pair", Priority::kLow, {"w2", "w3"}, kNow - absl::Minutes(30)}};
  auto plan = PlanPreemption(gang, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  // One idle + the pair (one victim) rather than the single and more.
  EXPECT_THAT(plan->victims, ElementsAre("pair"));
  EXPECT_THAT(plan->workers, ElementsAre("w1", "w2", "w3"));
  // Enough idle: nothing to preempt.
  gang.devices = 1;
  EXPECT_FALSE(PlanPreemption(gang, fleet, running, absl::Minutes(10), kNow)
                   .has_value());
  // Not enough even with every victim.
  gang.devices = 5;
  EXPECT_FALSE(PlanPreemption(gang, fleet, running, absl::Minutes(10), kNow)
                   .has_value());
}

TEST(PreemptionTest, NotPreemptedTwiceWithinTheGrace) {
  JobRequest high = Job("high", 1, 30);
  high.priority = Priority::kHigh;
  std::vector<WorkerInfo> fleet = {Gpu("w1", 40, false), Gpu("w2", 40, false)};
  std::vector<RunningJob> running = {
      {"recent",
       Priority::kLow,
       {"w1"},
       kNow - absl::Minutes(1),
       kNow - absl::Minutes(3)},
      {"other", Priority::kLow, {"w2"}, kNow - absl::Minutes(50)}};
  auto plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("other"));  // "recent" is in its grace
  plan = PlanPreemption(high, fleet, running, absl::Minutes(2), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("recent"));  // grace over: the newest
}

// Packing (rule 7).

// A LoRA job on `base` that needs `need_gib` alone, `base_gib` of it the
// base's weights (its shared_bytes).
JobRequest Lora(std::string id, int64_t order, int64_t need_gib,
                int64_t base_gib = 16, std::string base = "llama-8b") {
  JobRequest job = Job(std::move(id), order, need_gib);
  job.base_id = std::move(base);
  job.shared_bytes = base_gib * kGiB;
  return job;
}

RunningAttempt Attempt(const JobRequest& job) {
  return {job.job_id, job.base_id, job.memory_bytes, job.shared_bytes};
}

// A worker of `gib` that runs up to `max_attempts` at once: busy with
// `running`, idle if that is empty.
WorkerInfo Packer(std::string id, int64_t gib, int max_attempts,
                  std::vector<RunningAttempt> running = {}) {
  WorkerInfo w = Gpu(std::move(id), gib, running.empty());
  w.max_attempts = max_attempts;
  w.running = std::move(running);
  return w;
}

// As Placed, with " (packed)" after each packed placement.
std::vector<std::string> PlacedPacked(const RoundPlan& plan) {
  std::vector<std::string> out = Placed(plan);
  for (size_t i = 0; i < out.size(); ++i) {
    if (plan.placements[i].packed) out[i] += " (packed)";
  }
  return out;
}

TEST(PackingTest, ThreeLoraJobsOnOneBaseCountTheBaseOnce) {
  // Each job needs 24 GiB alone: the 16 GiB base + 8 of its own. Three on
  // the 40 GiB worker need 16 + 3 * 8 = 40, an exact fit; counted three
  // times, the base would make them 72. The first takes the 40 (best fit),
  // the others join it, and the 80 stays idle for the full fine-tuning.
  std::vector<WorkerInfo> fleet = {Gpu("w80", 80), Packer("w40", 40, 3)};
  std::vector<JobRequest> queue = {Lora("a", 1, 24), Lora("b", 2, 24),
                                   Lora("c", 3, 24), Job("full", 4, 60)};
  EXPECT_THAT(
      PlacedPacked(Plan(queue, fleet)),
      ElementsAre("a@w40", "b@w40 (packed)", "c@w40 (packed)", "full@w80"));
  // One more GiB for the last and it no longer fits beside the others: it
  // takes the 80, and the full fine-tuning waits.
  queue[2] = Lora("c", 3, 25);
  EXPECT_THAT(PlacedPacked(Plan(queue, fleet)),
              ElementsAre("a@w40", "b@w40 (packed)", "c@w80"));
}

TEST(PackingTest, AJobPacksOntoABusyWorkerAcrossRounds) {
  const JobRequest a = Lora("a", 1, 24);
  std::vector<WorkerInfo> fleet = {Packer("w", 40, 3)};
  EXPECT_THAT(PlacedPacked(Plan({a}, fleet)), ElementsAre("a@w"));
  // Next round: the worker reports that it runs a; b and c join it.
  fleet = {Packer("w", 40, 3, {Attempt(a)})};
  const JobRequest b = Lora("b", 2, 24);
  const JobRequest c = Lora("c", 3, 24);
  EXPECT_THAT(PlacedPacked(Plan({b, c}, fleet)),
              ElementsAre("b@w (packed)", "c@w (packed)"));
  // Its three slots are full: d waits, though memory would not stop it.
  fleet = {Packer("w", 64, 3, {Attempt(a), Attempt(b), Attempt(c)})};
  RoundPlan plan = Plan({Lora("d", 4, 24)}, fleet);
  EXPECT_THAT(Placed(plan), IsEmpty());
  EXPECT_THAT(plan.unplaceable, IsEmpty());
}

TEST(PackingTest, OnlyJobsThatShareTheSameBaseJoin) {
  const JobRequest running = Lora("r", 0, 24);
  std::vector<WorkerInfo> fleet = {Packer("w", 80, 4, {Attempt(running)}),
                                   Gpu("spare", 80)};
  JobRequest full = Job("full", 2, 24);  // on the same base, but its own copy
  full.base_id = "llama-8b";
  JobRequest unknown = Lora("unknown", 3, 24, 16, "");  // no base_id
  // Another base takes the idle worker; the full fine-tuning and the job of
  // unknown base find no idle worker left and wait, though w has room; the
  // job of w's base joins it.
  EXPECT_THAT(PlacedPacked(Plan({Lora("other", 1, 24, 16, "qwen-7b"), full,
                                 unknown, Lora("same", 4, 24)},
                                fleet)),
              ElementsAre("other@spare", "same@w (packed)"));
  // A worker running anything that cannot share takes nothing more: a full
  // fine-tuning, or something it did not list.
  JobRequest full_running = full;
  full_running.job_id = "full-running";
  fleet = {Packer("w1", 80, 4, {Attempt(running), Attempt(full_running)}),
           Packer("w2", 80, 4)};
  fleet[1].idle = false;
  EXPECT_THAT(Placed(Plan({Lora("same", 4, 24)}, fleet)), IsEmpty());
  // Nor one running jobs on two bases, whichever of them the job shares.
  fleet = {
      Packer("w", 80, 4,
             {Attempt(running), Attempt(Lora("q", 0, 24, 16, "qwen-7b"))})};
  EXPECT_THAT(
      Placed(Plan({Lora("same", 4, 24), Lora("other", 5, 24, 16, "qwen-7b")},
                  fleet)),
      IsEmpty());
}

TEST(PackingTest, AFullWorkerOrTooLittleMemorySendsTheJobElsewhere) {
  const JobRequest r = Lora("r", 0, 24);
  // One slot left on w: x1 takes it, x2 takes the idle worker.
  std::vector<WorkerInfo> fleet = {Packer("w", 80, 2, {Attempt(r)}),
                                   Gpu("spare", 40)};
  EXPECT_THAT(PlacedPacked(Plan({Lora("x1", 1, 24), Lora("x2", 2, 24)}, fleet)),
              ElementsAre("x1@w (packed)", "x2@spare"));
  // w has 40 GiB and runs 24: a job of 36 (the same 16 GiB base + 20 of its
  // own) needs 16 + 8 + 20 = 44 beside it. With no idle worker it waits
  // (it fits w alone, so it is not unplaceable); with one it takes it.
  fleet = {Packer("w", 40, 3, {Attempt(r)})};
  RoundPlan plan = Plan({Lora("big", 1, 36)}, fleet);
  EXPECT_THAT(Placed(plan), IsEmpty());
  EXPECT_THAT(plan.unplaceable, IsEmpty());
  fleet.push_back(Gpu("spare", 80));
  EXPECT_THAT(PlacedPacked(Plan({Lora("big", 1, 36)}, fleet)),
              ElementsAre("big@spare"));
  // The base counts once at its largest: a job reading the base as 20 GiB
  // (20 + 4 = 24 alone) needs 20 + 8 + 4 = 32 beside r, not 16 + 8 + 4.
  fleet = {Packer("w", 31, 3, {Attempt(r)})};
  EXPECT_THAT(Placed(Plan({Lora("wide", 1, 24, 20)}, fleet)), IsEmpty());
  fleet = {Packer("w", 32, 3, {Attempt(r)})};
  EXPECT_THAT(PlacedPacked(Plan({Lora("wide", 1, 24, 20)}, fleet)),
              ElementsAre("wide@w (packed)"));
}

TEST(PackingTest, ASpotBeatsAnIdleWorkerAndTheTightestSpotWins) {
  const JobRequest r = Lora("r", 0, 24);
  // The 24 GiB idle worker would fit the job more tightly than either busy
  // one, but joining one leaves it idle. Beside r it needs 16 + 8 + 8 = 32:
  // of the two spots the 48 has the least left after it (16 GiB, the 80
  // would have 48).
  std::vector<WorkerInfo> fleet = {Packer("w80", 80, 3, {Attempt(r)}),
                                   Packer("w48", 48, 3, {Attempt(r)}),
                                   Gpu("idle24", 24)};
  EXPECT_THAT(
      PlacedPacked(Plan({Lora("x", 1, 24), Job("small", 2, 20)}, fleet)),
      ElementsAre("x@w48 (packed)", "small@idle24"));
  // Labels and device kind still decide which workers a job may use.
  JobRequest eu = Lora("eu", 1, 24);
  eu.required_labels = {{"zone", "eu"}};
  fleet[0].labels = {{"zone", "eu"}};
  EXPECT_THAT(PlacedPacked(Plan({eu}, fleet)), ElementsAre("eu@w80 (packed)"));
}

TEST(PackingTest, TheHigherRankedJobGetsTheSpotFirst) {
  const JobRequest r = Lora("r", 0, 24);
  // One slot left and no idle worker.
  std::vector<WorkerInfo> fleet = {Packer("w", 80, 2, {Attempt(r)})};
  JobRequest low = Lora("low", 1, 24);
  low.priority = Priority::kLow;
  JobRequest high = Lora("high", 2, 24);
  high.priority = Priority::kHigh;
  EXPECT_THAT(Placed(Plan({low, high}, fleet)), ElementsAre("high@w"));
  // Within a class, fair share: project a runs a job already.
  JobRequest a = Lora("a", 1, 24);
  a.project = "a";
  JobRequest b = Lora("b", 2, 24);
  b.project = "b";
  EXPECT_THAT(Placed(Plan({a, b}, fleet, {{"a", 1}})), ElementsAre("b@w"));
  // A higher-ranked job that needs more than the spot has left does not
  // block the next one, which fits it.
  JobRequest big = Lora("big", 1, 80);
  big.priority = Priority::kHigh;
  EXPECT_THAT(Placed(Plan({big, Lora("next", 2, 24)}, fleet)),
              ElementsAre("next@w"));
}

TEST(PackingTest, GangsNeverPack) {
  const JobRequest r = Lora("r", 0, 24);
  JobRequest gang = Lora("g", 1, 24);
  gang.devices = 2;
  // Two spots with room, but a gang takes idle workers only: it waits, and
  // holds the one idle worker; the LoRA job behind it joins a spot.
  std::vector<WorkerInfo> fleet = {Packer("w1", 80, 3, {Attempt(r)}),
                                   Packer("w2", 80, 3, {Attempt(r)}),
                                   Packer("idle", 80, 3)};
  RoundPlan plan = Plan({gang, Lora("x", 2, 24)}, fleet);
  EXPECT_THAT(PlacedPacked(plan), ElementsAre("x@w1 (packed)"));
  ASSERT_EQ(plan.reserved.size(), 1u);
  EXPECT_THAT(plan.reserved[0].worker_ids, ElementsAre("idle"));
  // Nor does a gang's worker take jobs beside its rank.
  fleet = {Packer("i1", 80, 3), Packer("i2", 80, 3)};
  EXPECT_THAT(PlacedPacked(Plan({gang, Lora("x", 2, 24)}, fleet)),
              ElementsAre("g@i1", "g#1@i2"));
}

// Random fleets whose workers each run one attempt at a time: listing what
// they run and giving jobs a base changes nothing.
TEST(PackingTest, OneAttemptPerWorkerDecidesAsBefore) {
  std::mt19937 rng(11);
  auto pick = [&rng](int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(rng);
  };
  const int64_t sizes_gib[] = {16, 24, 40, 80};
  const char* bases[] = {"x", "y", ""};
  for (int round = 0; round < 200; ++round) {
    std::vector<JobRequest> queue;
    for (int j = 0, n = pick(20); j < n; ++j) {
      JobRequest job = Lora("j" + std::to_string(j), pick(20), 17 + pick(50),
                            pick(2) == 0 ? 0 : 16, bases[pick(3)]);
      job.project = std::string(1, static_cast<char>('a' + pick(3)));
      job.priority = static_cast<Priority>(pick(3));
      if (pick(5) == 0) job.devices = 2 + pick(3);
      queue.push_back(job);
    }
    std::vector<WorkerInfo> fleet;
    for (int w = 0, n = 1 + pick(10); w < n; ++w) {
      const std::string id = "w" + std::to_string(w);
      fleet.push_back(pick(3) == 0 ? Packer(id, sizes_gib[pick(4)], 1,
                                            {Attempt(Lora("r", 0, 17))})
                                   : Gpu(id, sizes_gib[pick(4)]));
    }
    RoundPlan got = PlanRound(queue, fleet, {}, {}, kNow);
    RoundPlan want = ReferencePlan(queue, fleet, {}, {}, kNow);
    ASSERT_EQ(PlacedPacked(got), Placed(want)) << "round " << round;
    ASSERT_EQ(got.reserved.size(), want.reserved.size()) << "round " << round;
    if (!got.reserved.empty()) {
      EXPECT_EQ(got.reserved[0].worker_ids, want.reserved[0].worker_ids);
    }
  }
}

// Rule 7 written as plainly as possible beside ReferencePlan's rules 1-4
// and 6 (no aging or backoff: these rounds have none): the fast
// implementation must decide exactly as this does.
RoundPlan ReferencePackingPlan(
    const std::vector<JobRequest>& queue, const std::vector<WorkerInfo>& fleet,
    const absl::flat_hash_map<std::string, int>& running) {
  auto accepts = [](const JobRequest& job, const WorkerInfo& w) {
    if (!job.device_kind.empty() && WorkerCapacity(w).kind != job.device_kind) {
      return false;
    }
    for (const auto& [k, v] : job.required_labels) {
      auto it = w.labels.find(k);
      if (it == w.labels.end() || it->second != v) return false;
    }
    return true;
  };
  auto fits = [&](const JobRequest& job, const WorkerInfo& w) {
    return WorkerCapacity(w).memory_bytes >= job.memory_bytes &&
           accepts(job, w);
  };
  std::vector<bool> idle;
  std::vector<std::vector<RunningAttempt>> on;  // running + given
  for (const WorkerInfo& w : fleet) {
    idle.push_back(w.idle);
    on.push_back(w.running);
  }
  // What worker w has left after `job` joins what it runs, if it can join.
  auto left_beside = [&](const JobRequest& job,
                         int w) -> std::optional<int64_t> {
    if (job.devices != 1 || job.shared_bytes <= 0 || job.base_id.empty() ||
        idle[w] || on[w].empty() ||
        static_cast<int>(on[w].size()) >= fleet[w].max_attempts ||
        !accepts(job, fleet[w])) {
      return std::nullopt;
    }
    int64_t base = job.shared_bytes;
    int64_t own = job.memory_bytes - job.shared_bytes;
    for (const RunningAttempt& a : on[w]) {
      if (a.shared_bytes <= 0 || a.base_id != job.base_id) return std::nullopt;
      base = std::max(base, a.shared_bytes);
      own += a.memory_bytes - a.shared_bytes;
    }
    const int64_t left = WorkerCapacity(fleet[w]).memory_bytes - base - own;
    if (left < 0) return std::nullopt;
    return left;
  };
  // The smallest idle worker that fits `job`, or -1.
  auto best_idle = [&](const JobRequest& job) {
    int best = -1;
    for (int w = 0; w < static_cast<int>(fleet.size()); ++w) {
      if (!idle[w] || !fits(job, fleet[w])) continue;
      if (best < 0 || WorkerCapacity(fleet[w]).memory_bytes <
                          WorkerCapacity(fleet[best]).memory_bytes) {
        best = w;
      }
    }
    return best;
  };
  RoundPlan plan;
  std::vector<int> pending;
  for (int i = 0; i < static_cast<int>(queue.size()); ++i) {
    int fitting = 0;
    for (const WorkerInfo& w : fleet) fitting += fits(queue[i], w) ? 1 : 0;
    if (fitting >= queue[i].devices) pending.push_back(i);
  }
  absl::flat_hash_map<std::string, int> count = running;
  while (!pending.empty()) {
    auto rank = [&](int i) {
      return std::tuple(-static_cast<int>(queue[i].priority),
                        count[queue[i].project], queue[i].enqueue_order, i);
    };
    auto next =
        std::min_element(pending.begin(), pending.end(),
                         [&](int a, int b) { return rank(a) < rank(b); });
    const JobRequest& job = queue[*next];
    pending.erase(next);
    int spot = -1;
    int64_t spot_left = 0;
    for (int w = 0; w < static_cast<int>(fleet.size()); ++w) {
      std::optional<int64_t> left = left_beside(job, w);
      if (left && (spot < 0 || *left < spot_left)) {
        spot = w;
        spot_left = *left;
      }
    }
    if (spot >= 0) {
      on[spot].push_back(Attempt(job));
      ++count[job.project];
      plan.placements.push_back({job.job_id, fleet[spot].worker_id, 0, true});
      continue;
    }
    if (std::none_of(idle.begin(), idle.end(), [](bool b) { return b; })) {
      continue;
    }
    std::vector<int> taken;
    while (static_cast<int>(taken.size()) < job.devices) {
      const int w = best_idle(job);
      if (w < 0) break;
      idle[w] = false;
      taken.push_back(w);
    }
    if (static_cast<int>(taken.size()) == job.devices) {
      count[job.project] += job.devices;
      for (int r = 0; r < job.devices; ++r) {
        // A gang's rank shares nothing with what might join it.
        on[taken[r]].push_back(job.devices == 1
                                   ? Attempt(job)
                                   : RunningAttempt{job.job_id, "", 0, 0});
        plan.placements.push_back({job.job_id, fleet[taken[r]].worker_id, r});
      }
    } else if (job.devices > 1 && plan.reserved.empty()) {
      Reservation held{job.job_id, {}};
      for (int w : taken) held.worker_ids.push_back(fleet[w].worker_id);
      plan.reserved.push_back(held);
    } else {
      for (int w : taken) idle[w] = true;
    }
  }
  return plan;
}

TEST(PackingTest, MatchesTheReferenceAndKeepsEveryWorkerWithinItsMemory) {
  std::mt19937 rng(17);
  auto pick = [&rng](int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(rng);
  };
  const int64_t sizes_gib[] = {24, 40, 48, 80};
  const char* bases[] = {"x", "y", "x", ""};
  // A job that shares 8 or 16 GiB of its base or nothing.
  auto job = [&](std::string id) {
    JobRequest j = Lora(std::move(id), pick(20), 17 + pick(40),
                        pick(3) == 0 ? 0 : 8 * (1 + pick(2)), bases[pick(4)]);
    j.project = std::string(1, static_cast<char>('a' + pick(3)));
    return j;
  };
  for (int round = 0; round < 500; ++round) {
    std::vector<WorkerInfo> fleet;
    for (int w = 0, n = 1 + pick(8); w < n; ++w) {
      const int max_attempts = 1 + pick(3);
      std::vector<RunningAttempt> running;
      if (pick(2) == 0) {
        for (int a = 1 + pick(max_attempts); a > 0; --a) {
          running.push_back(Attempt(job("r" + std::to_string(a))));
        }
      }
      fleet.push_back(Packer("w" + std::to_string(w), sizes_gib[pick(4)],
                             max_attempts, std::move(running)));
      if (pick(6) == 0) fleet.back().idle = false;  // busy, nothing listed
      if (pick(4) == 0) fleet.back().labels["zone"] = "eu";
    }
    std::vector<JobRequest> queue;
    for (int j = 0, n = pick(16); j < n; ++j) {
      queue.push_back(job("j" + std::to_string(j)));
      queue.back().priority = static_cast<Priority>(pick(3));
      if (pick(6) == 0) queue.back().devices = 2 + pick(2);
      if (pick(5) == 0) queue.back().required_labels["zone"] = "eu";
    }
    absl::flat_hash_map<std::string, int> running = {{"a", pick(3)}};
    RoundPlan got = PlanRound(queue, fleet, running, {}, kNow);
    RoundPlan want = ReferencePackingPlan(queue, fleet, running);
    ASSERT_EQ(PlacedPacked(got), PlacedPacked(want)) << "round " << round;
    ASSERT_EQ(got.reserved.size(), want.reserved.size()) << "round " << round;
    if (!got.reserved.empty()) {
      EXPECT_EQ(got.reserved[0].worker_ids, want.reserved[0].worker_ids);
    }
    // Whatever the reference says: what each worker runs after the round
    // fits its slots, and its memory with the base counted once.
    absl::flat_hash_map<std::string, const JobRequest*> by_id;
    for (const JobRequest& j : queue) by_id[j.job_id] = &j;
    for (const WorkerInfo& w : fleet) {
      std::vector<RunningAttempt> after = w.running;
      for (const Placement& p : got.placements) {
        if (p.worker_id != w.worker_id) continue;
        EXPECT_EQ(p.packed, !w.idle || !after.empty()) << "round " << round;
        after.push_back(Attempt(*by_id[p.job_id]));
      }
      if (after.size() <= w.running.size() || after.size() < 2) continue;
      EXPECT_LE(static_cast<int>(after.size()), w.max_attempts);
      int64_t base = 0;
      int64_t own = 0;
      for (const RunningAttempt& a : after) {
        EXPECT_GT(a.shared_bytes, 0) << "round " << round;
        EXPECT_EQ(a.base_id, after[0].base_id) << "round " << round;
        base = std::max(base, a.shared_bytes);
        own += a.memory_bytes - a.shared_bytes;
      }
      EXPECT_LE(base + own, WorkerCapacity(w).memory_bytes)
          << "round " << round;
    }
  }
}

TEST(PreemptionTest, APackedWorkerFreesOnlyWhenEveryJobOnItStops) {
  JobRequest high = Job("high", 1, 30);
  high.priority = Priority::kHigh;
  auto run = [](std::string id, Priority p, std::string worker,
                int started_min) {
    return RunningJob{std::move(id),
                      p,
                      {std::move(worker)},
                      kNow - absl::Minutes(started_min)};
  };
  auto attempt = [](std::string id) {
    return Attempt(Lora(std::move(id), 0, 24));
  };
  std::vector<RunningJob> running = {
      run("a", Priority::kLow, "packed", 5),
      run("b", Priority::kLow, "packed", 1),
      run("c", Priority::kLow, "mixed", 1),
      run("d", Priority::kHigh, "mixed", 1),  // never a victim of high
      run("e", Priority::kLow, "lone", 60)};
  std::vector<WorkerInfo> fleet = {
      Packer("packed", 80, 3, {attempt("a"), attempt("b")}),
      Packer("mixed", 80, 3, {attempt("c"), attempt("d")}),
      Packer("lone", 80, 3, {attempt("e")})};
  auto plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  // One victim frees the lone worker, though e has run the longest: b, the
  // newest, would free nothing while a runs beside it.
  EXPECT_THAT(plan->victims, ElementsAre("e"));
  EXPECT_THAT(plan->workers, ElementsAre("lone"));
  // Two workers: the packed one too, both its jobs, the newest first; never
  // the one running d.
  high.devices = 2;
  plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("e", "b", "a"));
  EXPECT_THAT(plan->workers, ElementsAre("lone", "packed"));
  high.devices = 3;
  EXPECT_FALSE(PlanPreemption(high, fleet, running, absl::Minutes(10), kNow)
                   .has_value());
  // Of two packed workers, the one with fewer jobs to stop.
  high.devices = 1;
  fleet[1] = Packer("mixed", 80, 3, {attempt("c")});
  fleet[2].running.push_back(attempt("f"));
  fleet[2].running.push_back(attempt("g"));
  running[3] = run("f", Priority::kLow, "lone", 2);
  running.push_back(run("g", Priority::kLow, "lone", 3));
  plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("c"));
  EXPECT_THAT(plan->workers, ElementsAre("mixed"));
  // An attempt a worker lists that `running` does not know pins it.
  fleet[1].running.push_back(attempt("unknown"));
  plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("b", "a"));
  EXPECT_THAT(plan->workers, ElementsAre("packed"));
  // A gang stopped frees only the ranks it runs alone.
  high.devices = 2;
  fleet = {Gpu("g1", 80, false), Gpu("g2", 80, false), Gpu("l", 80, false)};
  fleet[1].running = {Attempt(Lora("gang", 0, 24)), attempt("unknown")};
  running = {{"gang", Priority::kLow, {"g1", "g2"}, kNow},
             run("l", Priority::kLow, "l", 30)};
  plan = PlanPreemption(high, fleet, running, absl::Minutes(10), kNow);
  ASSERT_TRUE(plan.has_value());
  EXPECT_THAT(plan->victims, ElementsAre("gang", "l"));
  EXPECT_THAT(plan->workers, ElementsAre("g1", "l"));
}

// The plan of one attempt per worker, as it was before workers could run
// several: victims freeing the most fitting workers first, then the most
// recently started, then by id.
std::optional<PreemptionPlan> ReferencePreemption(
    const JobRequest& job, const std::vector<WorkerInfo>& fleet,
    const std::vector<RunningJob>& running, absl::Duration grace) {
  auto fits = [&job](const WorkerInfo& w) {
    return WorkerCapacity(w).memory_bytes >= job.memory_bytes;
  };
  PreemptionPlan plan;
  for (const WorkerInfo& w : fleet) {
    if (w.idle && fits(w)) plan.workers.push_back(w.worker_id);
  }
  if (static_cast<int>(plan.workers.size()) >= job.devices) return std::nullopt;
  std::vector<std::pair<const RunningJob*, std::vector<std::string>>> victims;
  for (const RunningJob& r : running) {
    if (r.priority >= job.priority || kNow - r.last_preempted < grace) continue;
    std::vector<std::string> fitting;
    for (const std::string& id : r.worker_ids) {
      for (const WorkerInfo& w : fleet) {
        if (w.worker_id == id && fits(w)) fitting.push_back(id);
      }
    }
    if (!fitting.empty()) victims.push_back({&r, fitting});
  }
  std::sort(victims.begin(), victims.end(), [](const auto& a, const auto& b) {
    auto key = [](const auto& v) {
      return std::tuple(-static_cast<int>(v.second.size()),
                        -absl::ToUnixNanos(v.first->started_at),
                        v.first->job_id);
    };
    return key(a) < key(b);
  });
  for (const auto& [r, fitting] : victims) {
    if (static_cast<int>(plan.workers.size()) >= job.devices) break;
    plan.victims.push_back(r->job_id);
    for (const std::string& w : fitting) plan.workers.push_back(w);
  }
  if (static_cast<int>(plan.workers.size()) < job.devices) return std::nullopt;
  plan.workers.resize(job.devices);
  return plan;
}

TEST(PreemptionTest, OneAttemptPerWorkerPlansAsBefore) {
  std::mt19937 rng(5);
  auto pick = [&rng](int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(rng);
  };
  const int64_t sizes_gib[] = {16, 40, 80};
  for (int round = 0; round < 300; ++round) {
    std::vector<WorkerInfo> fleet;
    std::vector<RunningJob> running;
    std::vector<std::string> busy;
    for (int w = 0, n = 1 + pick(10); w < n; ++w) {
      fleet.push_back(
          Gpu("w" + std::to_string(w), sizes_gib[pick(3)], pick(4) == 0));
      if (!fleet.back().idle) busy.push_back(fleet.back().worker_id);
    }
    std::shuffle(busy.begin(), busy.end(), rng);
    // Each busy worker runs one job; a gang runs on several.
    for (size_t next = 0; next < busy.size();) {
      RunningJob r;
      r.job_id = "r" + std::to_string(next);
      r.priority = static_cast<Priority>(pick(3));
      r.started_at = kNow - absl::Minutes(pick(5));
      if (pick(4) == 0) r.last_preempted = kNow - absl::Minutes(pick(20));
      for (int size = 1 + (pick(3) == 0 ? pick(3) : 0);
           size > 0 && next < busy.size(); --size) {
        r.worker_ids.push_back(busy[next++]);
      }
      running.push_back(r);
    }
    JobRequest job = Job("new", 0, 1 + pick(80));
    job.priority = static_cast<Priority>(1 + pick(2));
    job.devices = 1 + pick(3);
    auto got = PlanPreemption(job, fleet, running, absl::Minutes(10), kNow);
    auto want = ReferencePreemption(job, fleet, running, absl::Minutes(10));
    ASSERT_EQ(got.has_value(), want.has_value()) << "round " << round;
    if (!got) continue;
    EXPECT_EQ(got->victims, want->victims) << "round " << round;
    EXPECT_EQ(got->workers, want->workers) << "round " << round;
  }
}

}  // namespace
}  // namespace lathe::scheduler
