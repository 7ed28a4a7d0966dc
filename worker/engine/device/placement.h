// Where and in which precision a run computes: the device section of the
// run spec resolved against the devices this process sees.
#ifndef LATHE_WORKER_ENGINE_DEVICE_PLACEMENT_H_
#define LATHE_WORKER_ENGINE_DEVICE_PLACEMENT_H_

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

struct Placement {
  torch::Device device = torch::kCPU;
  torch::ScalarType compute = torch::kFloat32;  // of the matrix products
};

// ParseDevice and ResolveDtype (device.h) over the section: device "auto"
// is the first GPU when there is one, else the CPU; dtype "auto" is
// bfloat16 on a GPU that computes it natively, float32 on the CPU.
// INVALID_ARGUMENT naming the field for a value the section refuses;
// FAILED_PRECONDITION (a platform error, error_kind.h) naming
// "device.device" or "device.dtype" when this machine lacks what is asked.
absl::StatusOr<Placement> ResolvePlacement(const DeviceSpec& spec);

// For one of `runs` runs training at once in this process: the calling
// thread's CPU intra-op threads become the process's first count divided
// by `runs` (at least 1). Each thread's OpenMP team is its own, so `runs`
// teams of every core would oversubscribe the cores `runs` times (5x
// slower in engine_bench --jobs). Call on the run's thread before it
// trains; `runs` <= 1 changes nothing.
void ShareCpuThreads(int runs);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DEVICE_PLACEMENT_H_
