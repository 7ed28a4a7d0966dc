#include "common/job_state.h"

#include <set>
#include <utility>

#include <gtest/gtest.h>

namespace lathe {
namespace {

TEST(JobStateTest, EveryTransitionAllowedOrRefused) {
  using S = v1::JobStatus;
  const std::set<std::pair<S, S>> allowed = {
      {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_QUEUED},
      {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_FAILED},
      {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_RUNNING},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_FAILED},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_PAUSED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_SUCCEEDED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_FAILED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_QUEUED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_CANCELLING},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_PAUSED},
      {v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_QUEUED},
      {v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_SUCCEEDED},
      {v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_SUCCEEDED},
      {v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_FAILED},
  };
  int checked = 0;
  for (int f = v1::JobStatus_MIN; f <= v1::JobStatus_MAX; ++f) {
    for (int t = v1::JobStatus_MIN; t <= v1::JobStatus_MAX; ++t) {
      S from = static_cast<S>(f), to = static_cast<S>(t);
      EXPECT_EQ(IsAllowedTransition(from, to), allowed.count({from, to}) > 0)
          << StatusName(from) << " -> " << StatusName(to);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 81);
  // Nothing leaves a terminal state.
  for (S t : {v1::JOB_STATUS_SUCCEEDED, v1::JOB_STATUS_FAILED, v1::JOB_STATUS_CANCELLED}) {
    EXPECT_TRUE(IsTerminal(t));
    for (int to = v1::JobStatus_MIN; to <= v1::JobStatus_MAX; ++to) {
      EXPECT_FALSE(IsAllowedTransition(t, static_cast<S>(to)));
    }
  }
}

TEST(JobStateTest, NamesRoundTrip) {
  for (int s = v1::JOB_STATUS_VALIDATING_FILES; s <= v1::JobStatus_MAX; ++s) {
    auto status = static_cast<v1::JobStatus>(s);
    EXPECT_EQ(StatusFromName(StatusName(status)), status);
  }
  EXPECT_EQ(StatusFromName("bogus"), v1::JOB_STATUS_UNSPECIFIED);
}

}  // namespace
}  // namespace lathe
