#include "server/upload_slots.h"

#include "absl/strings/str_cat.h"

namespace lathe {

absl::StatusOr<UploadSlots::Slot> UploadSlots::Acquire(
    const std::string& key_id) {
  absl::MutexLock lock(&mu_);
  int& mine = per_key_[key_id];
  if (mine >= limits_.per_key) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_uploads_in_flight_per_key: this API key already has ",
                     mine, " uploads in flight (the limit is ", limits_.per_key,
                     "); retry when one ends"));
  }
  if (total_ >= limits_.per_server) {
    if (mine == 0) per_key_.erase(key_id);
    return absl::ResourceExhaustedError(
        absl::StrCat("max_uploads_in_flight: the server already has ", total_,
                     " uploads in flight (the limit is ", limits_.per_server,
                     "); retry later"));
  }
  ++mine;
  ++total_;
  return Slot(this, key_id);
}

void UploadSlots::Release(const std::string& key_id) {
  absl::MutexLock lock(&mu_);
  --total_;
  auto it = per_key_.find(key_id);
  if (--it->second == 0) per_key_.erase(it);
}

int UploadSlots::in_flight() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

int UploadSlots::in_flight(const std::string& key_id) const {
  absl::MutexLock lock(&mu_);
  auto it = per_key_.find(key_id);
  return it == per_key_.end() ? 0 : it->second;
}

}  // namespace lathe
