#include "common/ids.h"

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace lathe {

std::string NewId(absl::string_view prefix) {
  static constexpr char kAlphabet[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  thread_local absl::BitGen gen;
  std::string id(prefix);
  id.push_back('-');
  for (int i = 0; i < 24; ++i) {
    id.push_back(kAlphabet[absl::Uniform(gen, 0, 62)]);
  }
  return id;
}

int64_t NowUnixSeconds() { return absl::ToUnixSeconds(absl::Now()); }
int64_t NowUnixMillis() { return absl::ToUnixMillis(absl::Now()); }

}  // namespace lathe
