// Object ids ("file-…", "ftjob-…") and the wall clock in the units the API
// uses.
#ifndef LATHE_COMMON_IDS_H_
#define LATHE_COMMON_IDS_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

namespace lathe {

// `prefix` + "-" + 24 random base-62 characters (about 143 bits).
std::string NewId(absl::string_view prefix);

int64_t NowUnixSeconds();
int64_t NowUnixMillis();

}  // namespace lathe

#endif  // LATHE_COMMON_IDS_H_
