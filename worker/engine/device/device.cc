#include "worker/engine/device/device.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/error_kind.h"

#if LATHE_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lathe::engine {
namespace {

// LibTorch 2.4 replaced autocast's per-backend calls with calls taking the
// device type.
#if TORCH_VERSION_MAJOR >= 3 || \
    (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool AutocastEnabled(torch::DeviceType t) {
  return at::autocast::is_autocast_enabled(t);
}
void SetAutocast(torch::DeviceType t, bool on) {
  at::autocast::set_autocast_enabled(t, on);
}
torch::ScalarType AutocastDtype(torch::DeviceType t) {
  return at::autocast::get_autocast_dtype(t);
}
void SetAutocastDtype(torch::DeviceType t, torch::ScalarType dtype) {
  at::autocast::set_autocast_dtype(t, dtype);
}
#else
bool AutocastEnabled(torch::DeviceType t) {
  return t == torch::kCUDA ? at::autocast::is_enabled()
                           : at::autocast::is_cpu_enabled();
}
void SetAutocast(torch::DeviceType t, bool on) {
  t == torch::kCUDA ? at::autocast::set_enabled(on)
                    : at::autocast::set_cpu_enabled(on);
}
torch::ScalarType AutocastDtype(torch::DeviceType t) {
  return t == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype()
                           : at::autocast::get_autocast_cpu_dtype();
}
void SetAutocastDtype(torch::DeviceType t, torch::ScalarType dtype) {
  t == torch::kCUDA ? at::autocast::set_autocast_gpu_dtype(dtype)
                    : at::autocast::set_autocast_cpu_dtype(dtype);
}
#endif

// The compute capability's major number of GPU `index` (8 for Ampere), or
// 0 when unknown.
int ComputeCapabilityMajor(int index) {
  int major = 0;
#if LATHE_HAS_CUDA
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                             index) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
#endif
  (void)index;
  return major;
}

}  // namespace

absl::StatusOr<torch::Device> ParseDevice(absl::string_view device) {
  ASSIGN_OR_RETURN(
      DeviceChoice choice,
      ResolveDeviceChoice(device, CudaBuild(),
                          static_cast<int>(torch::cuda::device_count())));
  if (choice.kind == DeviceKind::kCpu) return torch::Device(torch::kCPU);
  return torch::Device(torch::kCUDA,
                       static_cast<torch::DeviceIndex>(choice.index));
}

absl::StatusOr<torch::ScalarType> ResolveDtype(absl::string_view dtype,
                                               const torch::Device& device) {
  auto bf16_gpu = [&] {
    return ComputeCapabilityMajor(std::max<int>(device.index(), 0)) >= 8;
  };
  if (dtype == "float32") return torch::kFloat32;
  if (dtype == "auto") {
    return device.is_cuda() && bf16_gpu() ? torch::kBFloat16 : torch::kFloat32;
  }
  if (dtype != "bfloat16") {
    return WithErrorKind(
        absl::InvalidArgumentError(
            absl::StrCat("dtype: \"", dtype,
                         "\" is not a dtype; use auto, float32 or bfloat16")),
        ErrorKind::kUserOptions, "dtype");
  }
  if (device.is_cuda() && !bf16_gpu()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dtype: bfloat16 needs a GPU of compute capability 8.0 or later "
        "(Ampere), and ",
        device.str(), " is older: set dtype to float32 or auto"));
  }
  return torch::kBFloat16;
}

ComputeDtypeScope::ComputeDtypeScope(const torch::Device& device,
                                     torch::ScalarType dtype)
    : type_(device.type()),
      was_enabled_(AutocastEnabled(type_)),
      previous_dtype_(AutocastDtype(type_)) {
  SetAutocast(type_, dtype != torch::kFloat32);
  if (dtype != torch::kFloat32) SetAutocastDtype(type_, dtype);
  at::autocast::increment_nesting();
}

ComputeDtypeScope::~ComputeDtypeScope() {
  // The outermost scope drops the casts of weights autocast cached.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocast(type_, was_enabled_);
  SetAutocastDtype(type_, previous_dtype_);
}

void SynchronizeDevice(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

}  // namespace lathe::engine
