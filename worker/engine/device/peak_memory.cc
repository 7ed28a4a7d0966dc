#include "worker/engine/device/peak_memory.h"

#include <fstream>

#include "worker/engine/device/proc_file.h"

#if LATHE_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace lathe::engine {
namespace {

#if LATHE_HAS_CUDA
// "cuda" without an ordinal is the current GPU, as for LibTorch.
c10::DeviceIndex GpuIndex(const torch::Device& device) {
  return device.has_index() ? device.index() : c10::cuda::current_device();
}
#endif

}  // namespace

absl::Status ResetPeakMemory(const torch::Device& device) {
#if LATHE_HAS_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(GpuIndex(device));
    return absl::OkStatus();
  }
#endif
  if (device.is_cuda()) {
    return absl::FailedPreconditionError(
        "this engine was built against a LibTorch without CUDA");
  }
  std::ofstream clear_refs("/proc/self/clear_refs");
  if (!(clear_refs << "5" << std::flush)) {
    return absl::InternalError(
        "cannot reset the peak resident size (/proc/self/clear_refs)");
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> PeakMemoryBytes(const torch::Device& device) {
#if LATHE_HAS_CUDA
  if (device.is_cuda()) {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(GpuIndex(device));
    return static_cast<int64_t>(stats.allocated_bytes[0].peak);  // AGGREGATE
  }
#endif
  if (device.is_cuda()) {
    return absl::FailedPreconditionError(
        "this engine was built against a LibTorch without CUDA");
  }
  absl::StatusOr<std::string> status = ReadProcFile("/proc/self/status");
  if (!status.ok()) return status.status();
  return ProcKilobyteField(*status, "VmHWM");
}

}  // namespace lathe::engine
