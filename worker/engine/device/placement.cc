#include "worker/engine/device/placement.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/error_kind.h"

namespace lathe::engine {

absl::StatusOr<Placement> ResolvePlacement(const DeviceSpec& spec) {
  RETURN_IF_ERROR(Validate(spec));
  Placement p;
  const int64_t gpus = torch::cuda::is_available()
                           ? static_cast<int64_t>(torch::cuda::device_count())
                           : 0;
  if (spec.device == "auto") {
    p.device = gpus > 0 ? torch::Device(torch::kCUDA, 0)
                        : torch::Device(torch::kCPU);
  } else if (spec.device != "cpu") {
    torch::Device wanted(spec.device);
    const int64_t index = wanted.has_index() ? wanted.index() : 0;
    if (index >= gpus) {
      return WithErrorKind(
          absl::FailedPreconditionError(absl::StrCat(
              "device \"", spec.device, "\": this worker's LibTorch sees ",
              gpus, " CUDA device(s); run it on a GPU machine with a CUDA "
              "build of LibTorch, or use device \"cpu\" (or \"auto\")")),
          ErrorKind::kPlatform);
    }
    p.device = torch::Device(torch::kCUDA, static_cast<int8_t>(index));
  }
  if (spec.dtype == "bfloat16" ||
      (spec.dtype == "auto" && p.device.is_cuda())) {
    p.compute = torch::kBFloat16;
  }
  return p;
}

}  // namespace lathe::engine
