#include "worker/engine/device/device_inventory.h"

#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/engine/device/proc_file.h"
#include "worker/engine/error_kind.h"

#if LATHE_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lathe::engine {
namespace {

constexpr char kChoices[] = "use auto, cpu, cuda or cuda:N";

absl::StatusOr<DeviceInfo> CpuInfo() {
  ASSIGN_OR_RETURN(std::string meminfo, ReadProcFile("/proc/meminfo"));
  return CpuInfoFromMeminfo(
      meminfo, static_cast<int>(std::thread::hardware_concurrency()));
}

// GPU `index`'s name and memory; an entry with no memory (and a warning)
// when the driver cannot tell.
DeviceInfo CudaInfo(int index) {
  DeviceInfo info;
  info.kind = DeviceKind::kCuda;
  info.index = index;
  info.name = absl::StrCat("cuda:", index);
#if LATHE_HAS_CUDA
  cudaDeviceProp properties;
  if (cudaGetDeviceProperties(&properties, index) == cudaSuccess) {
    info.name = properties.name;
    info.total_memory_bytes = static_cast<int64_t>(properties.totalGlobalMem);
  }
  int current = 0;
  size_t free_bytes = 0, total_bytes = 0;
  cudaError_t error = cudaGetDevice(&current);
  if (error == cudaSuccess) error = cudaSetDevice(index);
  if (error == cudaSuccess) error = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(current);
  if (error == cudaSuccess) {
    info.free_memory_bytes = static_cast<int64_t>(free_bytes);
    info.total_memory_bytes = static_cast<int64_t>(total_bytes);
  } else {
    cudaGetLastError();  // clear it, so LibTorch does not trip on it later
    spdlog::warn("cuda:{}: cannot read its free memory: {}", index,
                 cudaGetErrorString(error));
  }
#endif
  return info;
}

absl::StatusOr<DeviceInfo> Describe(const DeviceChoice& choice) {
  if (choice.kind == DeviceKind::kCuda) return CudaInfo(choice.index);
  return CpuInfo();
}

}  // namespace

absl::string_view DeviceKindName(DeviceKind kind) {
  return kind == DeviceKind::kCuda ? "cuda" : "cpu";
}

absl::StatusOr<DeviceChoice> ResolveDeviceChoice(absl::string_view device,
                                                 bool cuda_build,
                                                 int cuda_devices) {
  if (device == "auto") {
    return cuda_devices > 0 ? DeviceChoice{DeviceKind::kCuda, 0}
                            : DeviceChoice{DeviceKind::kCpu, 0};
  }
  if (device == "cpu") return DeviceChoice{DeviceKind::kCpu, 0};
  absl::string_view rest = device;
  DeviceChoice choice{DeviceKind::kCuda, 0};
  if (!absl::ConsumePrefix(&rest, "cuda") ||
      (!rest.empty() &&
       (!absl::ConsumePrefix(&rest, ":") || rest.empty() ||
        rest.find_first_not_of("0123456789") != absl::string_view::npos ||
        !absl::SimpleAtoi(rest, &choice.index)))) {
    return WithErrorKind(
        absl::InvalidArgumentError(absl::StrCat(
            "device: \"", device, "\" is not a device; ", kChoices)),
        ErrorKind::kUserOptions, "device");
  }
  if (!cuda_build) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device: ", device,
        " asks for a GPU, but this engine was built against a LibTorch "
        "without CUDA; set device to cpu or auto, or build Lathe against a "
        "CUDA LibTorch (docs/device-check.md)"));
  }
  if (cuda_devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device: ", device,
        " asks for a GPU, but no CUDA device is visible to this process "
        "(check nvidia-smi and CUDA_VISIBLE_DEVICES); set device to cpu or "
        "auto to run on the CPU"));
  }
  if (choice.index >= cuda_devices) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device: ", device, " is not visible to this process, which sees ",
        cuda_devices, " GPU(s): cuda:0 to cuda:", cuda_devices - 1));
  }
  return choice;
}

bool CudaBuild() {
#if LATHE_HAS_CUDA
  return true;
#else
  return false;
#endif
}

int CudaDeviceCount() {
#if LATHE_HAS_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: a CPU machine
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

std::vector<DeviceInfo> ListDevices() {
  std::vector<DeviceInfo> devices;
  absl::StatusOr<DeviceInfo> cpu = CpuInfo();
  if (cpu.ok()) {
    devices.push_back(*std::move(cpu));
  } else {
    spdlog::warn("the CPU's memory is unknown: {}", cpu.status().ToString());
    devices.push_back({.name = "cpu"});
  }
  const int gpus = CudaDeviceCount();
  for (int i = 0; i < gpus; ++i) devices.push_back(CudaInfo(i));
  return devices;
}

absl::StatusOr<std::vector<DeviceInfo>> ChosenDevices(
    absl::string_view device) {
  ASSIGN_OR_RETURN(DeviceChoice choice,
                   ResolveDeviceChoice(device, CudaBuild(), CudaDeviceCount()));
  ASSIGN_OR_RETURN(DeviceInfo info, Describe(choice));
  return std::vector<DeviceInfo>{std::move(info)};
}

absl::StatusOr<DeviceInfo> CpuInfoFromMeminfo(absl::string_view meminfo,
                                              int threads) {
  DeviceInfo info;
  info.kind = DeviceKind::kCpu;
  info.name = absl::StrCat("cpu x", threads);
  ASSIGN_OR_RETURN(info.total_memory_bytes,
                   ProcKilobyteField(meminfo, "MemTotal"));
  ASSIGN_OR_RETURN(info.free_memory_bytes,
                   ProcKilobyteField(meminfo, "MemAvailable"));
  return info;
}

}  // namespace lathe::engine
