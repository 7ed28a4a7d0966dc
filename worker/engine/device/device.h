// The run's device and dtype as LibTorch values: the `device` and `dtype`
// settings of a run resolved on this machine, and the scope that computes in
// the chosen dtype.
//
// Precision: weights, gradients and optimizer moments stay float32 (master
// weights); with dtype bfloat16 the matmuls, linear layers and attention run
// in bfloat16 under LibTorch's autocast (ComputeDtypeScope), as
// torch.autocast does in PyTorch.
#ifndef LATHE_WORKER_ENGINE_DEVICE_DEVICE_H_
#define LATHE_WORKER_ENGINE_DEVICE_DEVICE_H_

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/device/device_inventory.h"

namespace lathe::engine {

// "auto" | "cpu" | "cuda" | "cuda:N" as a torch::Device on this machine
// (auto: cuda:0 when torch::cuda::is_available(), else the CPU). Errors of
// ResolveDeviceChoice: INVALID_ARGUMENT naming `device` for bad text,
// FAILED_PRECONDITION naming `device` and what to do when CUDA is asked for
// and this build or machine has none.
absl::StatusOr<torch::Device> ParseDevice(absl::string_view device);

// "auto" | "float32" | "bfloat16" as the compute dtype on `device` (auto:
// bfloat16 on a GPU that computes it natively, compute capability 8.0 or
// later; float32 on the CPU and on older GPUs). INVALID_ARGUMENT naming
// `dtype` for any other text; FAILED_PRECONDITION naming `dtype` for
// bfloat16 on a GPU older than 8.0.
absl::StatusOr<torch::ScalarType> ResolveDtype(absl::string_view dtype,
                                               const torch::Device& device);

// While alive, the current thread computes on `device`'s kind of device the
// ops autocast lowers (matmul, linear, attention) in `dtype`, the rest in
// float32; with float32, everything in float32 (autocast off). Restores the
// previous state when destroyed, so scopes nest. Not copyable; create and
// destroy it on one thread.
class ComputeDtypeScope {
 public:
  ComputeDtypeScope(const torch::Device& device, torch::ScalarType dtype);
  ~ComputeDtypeScope();
  ComputeDtypeScope(const ComputeDtypeScope&) = delete;
  ComputeDtypeScope& operator=(const ComputeDtypeScope&) = delete;

 private:
  const torch::DeviceType type_;
  const bool was_enabled_;
  const torch::ScalarType previous_dtype_;
};

// Waits until the work queued on `device` is done (timing a GPU); returns
// at once for the CPU.
void SynchronizeDevice(const torch::Device& device);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DEVICE_DEVICE_H_
