// Which devices a run can use and what they hold, without LibTorch headers:
// the worker's agent reports these to lathed, and the engine turns the same
// `device` setting into a torch::Device (device.h).
//
// CUDA devices are seen only in an engine built against a LibTorch with CUDA
// (LATHE_HAS_CUDA, set by CMake); a CPU build has the CPU alone.
// Thread-safe.
#ifndef LATHE_WORKER_ENGINE_DEVICE_DEVICE_INVENTORY_H_
#define LATHE_WORKER_ENGINE_DEVICE_DEVICE_INVENTORY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe::engine {

enum class DeviceKind { kCpu, kCuda };

// "cpu" or "cuda": the prefix of device strings, and the worker protocol's
// Device.kind.
absl::string_view DeviceKindName(DeviceKind kind);

// A device a run is placed on.
struct DeviceChoice {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // the GPU's ordinal (cuda:1 -> 1); 0 for the CPU
};

// Resolves a `device` setting on a machine whose LibTorch has CUDA
// (`cuda_build`) and sees `cuda_devices` GPUs:
//   "auto"    cuda:0 when there is a GPU, else the CPU
//   "cpu"     the CPU
//   "cuda"    cuda:0
//   "cuda:N"  GPU N
// INVALID_ARGUMENT naming `device` for any other text; FAILED_PRECONDITION
// naming `device`, saying why and what to do, when it asks for a GPU that
// this build or this machine does not have.
absl::StatusOr<DeviceChoice> ResolveDeviceChoice(absl::string_view device,
                                                 bool cuda_build,
                                                 int cuda_devices);

// True when this engine was built against a LibTorch with CUDA.
bool CudaBuild();

// The GPUs this process sees (CUDA_VISIBLE_DEVICES applies): 0 in a CPU
// build or without a working driver. Creates no CUDA context.
int CudaDeviceCount();

struct DeviceInfo {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;                   // as DeviceChoice
  std::string name;                // "cpu x16", "NVIDIA H100 80GB HBM3"
  int64_t total_memory_bytes = 0;  // the CPU's: MemTotal
  int64_t free_memory_bytes = 0;   // the CPU's: MemAvailable
};

// Every device of this machine: the CPU first, then each GPU in ordinal
// order. Reading a GPU's free memory creates a CUDA context on it (a few
// hundred MiB of its memory), so a worker reports ChosenDevices instead.
std::vector<DeviceInfo> ListDevices();

// The devices of ListDevices() that a run with `device` uses (one today),
// reading only those. Errors of ResolveDeviceChoice for this machine.
absl::StatusOr<std::vector<DeviceInfo>> ChosenDevices(absl::string_view device);

// The CPU's entry from the text of /proc/meminfo and the number of hardware
// threads: name "cpu x<threads>", MemTotal and MemAvailable. Errors of
// ProcKilobyteField when either line is missing or malformed.
absl::StatusOr<DeviceInfo> CpuInfoFromMeminfo(absl::string_view meminfo,
                                              int threads);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DEVICE_DEVICE_INVENTORY_H_
