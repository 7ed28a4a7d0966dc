// The uploads in flight, counted per API key and in all, so that neither
// one key nor all keys together hold more uploads open than their limits
// (each open upload holds a line buffer and a message in memory).
//
// Thread-safe. A Slot frees itself when destroyed, so an upload that fails,
// is refused or is cancelled gives its slot back on every path.
#ifndef LATHE_SERVER_UPLOAD_SLOTS_H_
#define LATHE_SERVER_UPLOAD_SLOTS_H_

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace lathe {

class UploadSlots {
 public:
  struct Limits {
    int per_key;     // OperationOptions::max_uploads_in_flight_per_key
    int per_server;  // OperationOptions::max_uploads_in_flight
  };

  // One upload's place; frees it when destroyed. Move-only.
  class Slot {
   public:
    Slot(Slot&& other) noexcept
        : slots_(std::exchange(other.slots_, nullptr)),
          key_id_(std::move(other.key_id_)) {}
    Slot& operator=(Slot&&) = delete;
    ~Slot() {
      if (slots_ != nullptr) slots_->Release(key_id_);
    }

   private:
    friend class UploadSlots;
    Slot(UploadSlots* slots, std::string key_id)
        : slots_(slots), key_id_(std::move(key_id)) {}
    UploadSlots* slots_;  // null once moved from
    std::string key_id_;
  };

  explicit UploadSlots(Limits limits) : limits_(limits) {}

  // A slot for an upload by key `key_id`. RESOURCE_EXHAUSTED naming the
  // flag (max_uploads_in_flight_per_key or max_uploads_in_flight) when the
  // key or the server already holds its limit.
  // REQUIRES: the returned Slot is destroyed before this object.
  absl::StatusOr<Slot> Acquire(const std::string& key_id);

  // Uploads in flight, in all and of `key_id` (for tests).
  int in_flight() const;
  int in_flight(const std::string& key_id) const;

 private:
  void Release(const std::string& key_id);

  // Constant after construction.
  const Limits limits_;

  mutable absl::Mutex mu_;
  int total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, int> per_key_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lathe

#endif  // LATHE_SERVER_UPLOAD_SLOTS_H_
