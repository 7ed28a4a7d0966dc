#include "worker/engine/model/shared_base.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace lathe::engine {
namespace {

using Key = std::tuple<std::string, std::string, int>;  // dir, device, dtype

// One base's slot: its mutex is held while it is read, so a second caller
// waits for that read instead of making another copy.
struct Slot {
  std::mutex mu;
  std::weak_ptr<const SharedBase> base;
};

std::mutex registry_mu;
std::map<Key, std::shared_ptr<Slot>>& Registry() {
  static auto* registry = new std::map<Key, std::shared_ptr<Slot>>();
  return *registry;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const SharedBase>> AcquireSharedBase(
    const std::string& dir, torch::Device device, torch::ScalarType storage) {
  std::error_code error;
  std::filesystem::path canonical =
      std::filesystem::weakly_canonical(dir, error);
  const std::string path = error ? dir : canonical.string();
  const Key key{path, device.str(), static_cast<int>(storage)};
  std::shared_ptr<Slot> slot;
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    // Forget the slots of bases no run holds any more.
    for (auto it = Registry().begin(); it != Registry().end();) {
      if (it->first != key && it->second->base.expired() &&
          it->second.use_count() == 1) {
        it = Registry().erase(it);
      } else {
        ++it;
      }
    }
    std::shared_ptr<Slot>& entry = Registry()[key];
    if (entry == nullptr) entry = std::make_shared<Slot>();
    slot = entry;
  }
  std::lock_guard<std::mutex> lock(slot->mu);
  if (std::shared_ptr<const SharedBase> held = slot->base.lock()) {
    spdlog::info("sharing the base {} already held on {} ({} MiB) with {} other run(s)",
                 path, device.str(), held->bytes >> 20, held.use_count() - 1);
    return held;
  }
  auto base = std::make_shared<SharedBase>();
  base->dir = path;
  ASSIGN_OR_RETURN(base->config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(base->weights, LoadModelWeights(dir));
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : base->weights) {
    tensor = tensor.to(device, storage);
    base->bytes += tensor.numel() * tensor.element_size();
  }
  slot->base = base;
  spdlog::info("holding the base {} on {} ({} MiB) for the runs over it", path,
               device.str(), base->bytes >> 20);
  return std::shared_ptr<const SharedBase>(std::move(base));
}

int SharedBasesHeld() {
  std::lock_guard<std::mutex> lock(registry_mu);
  int held = 0;
  for (const auto& [key, slot] : Registry()) {
    if (!slot->base.expired()) ++held;
  }
  return held;
}

}  // namespace lathe::engine
