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

// device "auto" is CUDA when LibTorch sees a CUDA device, else the CPU;
// dtype "auto" is bfloat16 on CUDA and float32 on the CPU.
// FAILED_PRECONDITION (a platform error, error_kind.h) naming the device
// when CUDA is asked for and absent or the index is out of range;
// INVALID_ARGUMENT naming the field for a value Validate refuses.
absl::StatusOr<Placement> ResolvePlacement(const DeviceSpec& spec);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DEVICE_PLACEMENT_H_
