// The most memory a run has held on its device: what the benchmark reports
// and what a job's memory estimate is checked against.
//   CUDA: the caching allocator's peak of allocated bytes on that GPU
//         (torch.cuda.max_memory_allocated), CUDA builds only;
//   CPU:  the process's peak resident set (VmHWM), which counts everything
//         the process holds, not only tensors.
#ifndef LATHE_WORKER_ENGINE_DEVICE_PEAK_MEMORY_H_
#define LATHE_WORKER_ENGINE_DEVICE_PEAK_MEMORY_H_

#include <torch/torch.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lathe::engine {

// Starts a new peak at the current use. CPU: writes "5" to
// /proc/self/clear_refs (Linux 4.0 or later); INTERNAL when that fails.
absl::Status ResetPeakMemory(const torch::Device& device);

// The peak since the start or the last ResetPeakMemory, in bytes. NOT_FOUND
// when /proc/self/status cannot be read (CPU); FAILED_PRECONDITION for a
// CUDA device in a CPU build.
absl::StatusOr<int64_t> PeakMemoryBytes(const torch::Device& device);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DEVICE_PEAK_MEMORY_H_
