// The device module on this machine's CPU (and its GPUs when it has any),
// and the messages a wrong `device` or `dtype` gets.
#include "worker/engine/device/device.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <thread>

#include "worker/engine/device/device_inventory.h"
#include "worker/engine/device/peak_memory.h"
#include "worker/engine/device/proc_file.h"
#include "worker/engine/error_kind.h"

namespace lathe::engine {
namespace {

constexpr int64_t kMiB = 1 << 20;

bool Contains(const absl::Status& status, const std::string& text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

TEST(ResolveDeviceChoiceTest, Names) {
  struct Case {
    const char* text;
    int gpus;
    DeviceKind kind;
    int index;
  };
  for (const Case& c : {Case{"auto", 0, DeviceKind::kCpu, 0},
                        Case{"auto", 2, DeviceKind::kCuda, 0},
                        Case{"cpu", 2, DeviceKind::kCpu, 0},
                        Case{"cuda", 2, DeviceKind::kCuda, 0},
                        Case{"cuda:1", 2, DeviceKind::kCuda, 1}}) {
    auto choice = ResolveDeviceChoice(c.text, true, c.gpus);
    ASSERT_TRUE(choice.ok()) << c.text << ": " << choice.status();
    EXPECT_EQ(choice->kind, c.kind) << c.text;
    EXPECT_EQ(choice->index, c.index) << c.text;
  }
}

TEST(ResolveDeviceChoiceTest, BadTextNamesTheField) {
  for (const char* text : {"", "gpu", "CUDA", "cuda1", "cuda:", "cuda:x",
                           "cuda:-1", "cuda:0:1", "cpu:0", " cpu"}) {
    auto choice = ResolveDeviceChoice(text, true, 8);
    ASSERT_EQ(choice.status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << text << "\"";
    EXPECT_TRUE(Contains(choice.status(), "use auto, cpu, cuda or cuda:N"))
        << choice.status();
    EXPECT_EQ(ErrorKindOf(choice.status()), ErrorKind::kUserOptions);
    EXPECT_EQ(ErrorFieldOf(choice.status()), "device");
  }
}

TEST(ResolveDeviceChoiceTest, CudaWithoutCudaSaysWhatToDo) {
  auto cpu_build = ResolveDeviceChoice("cuda", false, 0);
  EXPECT_EQ(cpu_build.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cpu_build.status().message(),
            "device: cuda asks for a GPU, but this engine was built against a "
            "LibTorch without CUDA; set device to cpu or auto, or build Lathe "
            "against a CUDA LibTorch (docs/device-check.md)");

  auto no_gpu = ResolveDeviceChoice("cuda:0", true, 0);
  EXPECT_EQ(no_gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(no_gpu.status().message(),
            "device: cuda:0 asks for a GPU, but no CUDA device is visible to "
            "this process (check nvidia-smi and CUDA_VISIBLE_DEVICES); set "
            "device to cpu or auto to run on the CPU");

  auto too_far = ResolveDeviceChoice("cuda:2", true, 2);
  EXPECT_EQ(too_far.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(too_far.status().message(),
            "device: cuda:2 is not visible to this process, which sees 2 "
            "GPU(s): cuda:0 to cuda:1");
}

TEST(ParseDeviceTest, FollowsThisMachine) {
  auto cpu = ParseDevice("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->is_cpu());

  auto automatic = ParseDevice("auto");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ(automatic->is_cuda(), torch::cuda::is_available());

  auto cuda = ParseDevice("cuda:0");
  if (torch::cuda::is_available()) {
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_EQ(*cuda, torch::Device(torch::kCUDA, 0));
  } else {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(cuda.status(), "set device to cpu or auto"))
        << cuda.status();
  }
  EXPECT_EQ(ParseDevice("tpu").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ResolveDtypeTest, AutoIsFloat32OnTheCpu) {
  const torch::Device cpu(torch::kCPU);
  EXPECT_EQ(*ResolveDtype("auto", cpu), torch::kFloat32);
  EXPECT_EQ(*ResolveDtype("float32", cpu), torch::kFloat32);
  EXPECT_EQ(*ResolveDtype("bfloat16", cpu), torch::kBFloat16);
}

TEST(ResolveDtypeTest, BadTextNamesTheField) {
  for (const char* text : {"fp16", "bf16", "float16", "", "Float32"}) {
    auto dtype = ResolveDtype(text, torch::Device(torch::kCPU));
    ASSERT_EQ(dtype.status().code(), absl::StatusCode::kInvalidArgument)
        << text;
    EXPECT_EQ(dtype.status().message(),
              "dtype: \"" + std::string(text) +
                  "\" is not a dtype; use auto, float32 or bfloat16");
    EXPECT_EQ(ErrorFieldOf(dtype.status()), "dtype");
  }
}

TEST(ResolveDtypeTest, AutoIsBfloat16OnAModernGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  // The GPUs Lathe's device check runs on (A100, H100, H200) are all 8.0+.
  EXPECT_EQ(*ResolveDtype("auto", torch::Device(torch::kCUDA, 0)),
            torch::kBFloat16);
}

TEST(ComputeDtypeScopeTest, LowersMatmulsOnlyInside) {
  const torch::Device device = *ParseDevice("auto");
  const torch::Tensor a = torch::randn({8, 16}, device);
  const torch::Tensor w = torch::randn({4, 16}, device);
  {
    ComputeDtypeScope bf16(device, torch::kBFloat16);
    EXPECT_EQ(torch::linear(a, w).scalar_type(), torch::kBFloat16);
    EXPECT_EQ(torch::mm(a, w.t()).scalar_type(), torch::kBFloat16);
    {
      ComputeDtypeScope fp32(device, torch::kFloat32);
      EXPECT_EQ(torch::linear(a, w).scalar_type(), torch::kFloat32);
    }
    EXPECT_EQ(torch::linear(a, w).scalar_type(), torch::kBFloat16);
    // Elementwise ops keep float32.
    EXPECT_EQ((a * 2).scalar_type(), torch::kFloat32);
  }
  EXPECT_EQ(torch::linear(a, w).scalar_type(), torch::kFloat32);
}

TEST(ProcKilobyteFieldTest, ReadsTheKeyedLine) {
  const std::string text =
      "MemTotalish:   1 kB\nMemTotal:       16314372 kB\nMemFree: 7 kB\n";
  EXPECT_EQ(*ProcKilobyteField(text, "MemTotal"), 16314372LL * 1024);
  EXPECT_EQ(*ProcKilobyteField(text, "MemFree"), 7 * 1024);
  EXPECT_EQ(ProcKilobyteField(text, "Mem").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ProcKilobyteField("VmHWM: lots\n", "VmHWM").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ProcKilobyteField("VmHWM: 12 MB\n", "VmHWM").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuInfoTest, FromMeminfo) {
  auto info = CpuInfoFromMeminfo(
      "MemTotal:       16314372 kB\nMemFree:  1 kB\n"
      "MemAvailable:   12000000 kB\n",
      16);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->kind, DeviceKind::kCpu);
  EXPECT_EQ(info->name, "cpu x16");
  EXPECT_EQ(info->total_memory_bytes, 16314372LL * 1024);
  EXPECT_EQ(info->free_memory_bytes, 12000000LL * 1024);
  EXPECT_EQ(CpuInfoFromMeminfo("MemTotal: 1 kB\n", 2).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ListDevicesTest, TheCpuThenEachGpu) {
  const std::vector<DeviceInfo> devices = ListDevices();
  ASSERT_EQ(devices.size(), 1 + static_cast<size_t>(CudaDeviceCount()));
  EXPECT_EQ(devices[0].kind, DeviceKind::kCpu);
  EXPECT_EQ(devices[0].name,
            "cpu x" + std::to_string(std::thread::hardware_concurrency()));
  EXPECT_GT(devices[0].total_memory_bytes, 64 * kMiB);
  EXPECT_GT(devices[0].free_memory_bytes, 0);
  EXPECT_LE(devices[0].free_memory_bytes, devices[0].total_memory_bytes);
  for (size_t i = 1; i < devices.size(); ++i) {
    EXPECT_EQ(devices[i].kind, DeviceKind::kCuda);
    EXPECT_EQ(devices[i].index, static_cast<int>(i - 1));
    EXPECT_FALSE(devices[i].name.empty());
    EXPECT_GT(devices[i].free_memory_bytes, 0);
    EXPECT_LE(devices[i].free_memory_bytes, devices[i].total_memory_bytes);
  }
  EXPECT_EQ(CudaDeviceCount(), static_cast<int>(torch::cuda::device_count()));
}

TEST(ChosenDevicesTest, OnlyTheChosenOne) {
  auto cpu = ChosenDevices("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_EQ(cpu->size(), 1u);
  EXPECT_EQ((*cpu)[0].kind, DeviceKind::kCpu);
  EXPECT_GT((*cpu)[0].total_memory_bytes, 0);

  auto automatic = ChosenDevices("auto");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  ASSERT_EQ(automatic->size(), 1u);
  EXPECT_EQ((*automatic)[0].kind,
            CudaDeviceCount() > 0 ? DeviceKind::kCuda : DeviceKind::kCpu);

  EXPECT_EQ(ChosenDevices("gpu").status().code(),
            absl::StatusCode::kInvalidArgument);
  if (CudaDeviceCount() == 0) {
    EXPECT_EQ(ChosenDevices("cuda").status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

// Touches every page of a new tensor of `bytes` on `device`.
torch::Tensor Filled(int64_t bytes, const torch::Device& device) {
  return torch::ones({bytes / 4}, torch::TensorOptions(device));
}

TEST(PeakMemoryTest, CpuPeakFollowsAnAllocationAndResets) {
  const torch::Device cpu(torch::kCPU);
  ASSERT_TRUE(ResetPeakMemory(cpu).ok());
  const int64_t before = *PeakMemoryBytes(cpu);
  {
    torch::Tensor big = Filled(256 * kMiB, cpu);
    EXPECT_GE(*PeakMemoryBytes(cpu), before + 250 * kMiB);
  }
  ASSERT_TRUE(ResetPeakMemory(cpu).ok());
  EXPECT_LT(*PeakMemoryBytes(cpu), before + 200 * kMiB);
}

TEST(PeakMemoryTest, CudaPeakFollowsAnAllocationAndResets) {
  if (!CudaBuild()) {
    EXPECT_EQ(PeakMemoryBytes(torch::Device(torch::kCUDA, 0)).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device gpu(torch::kCUDA, 0);
  ASSERT_TRUE(ResetPeakMemory(gpu).ok());
  const int64_t before = *PeakMemoryBytes(gpu);
  {
    torch::Tensor big = Filled(256 * kMiB, gpu);
    SynchronizeDevice(gpu);
    EXPECT_GE(*PeakMemoryBytes(gpu), before + 256 * kMiB);
  }
  ASSERT_TRUE(ResetPeakMemory(gpu).ok());
  EXPECT_LT(*PeakMemoryBytes(gpu), before + 256 * kMiB);
}

}  // namespace
}  // namespace lathe::engine
