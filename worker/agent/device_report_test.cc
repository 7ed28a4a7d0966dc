#include "worker/agent/device_report.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace lathe::worker {
namespace {

TEST(DeviceProtoTest, CarriesKindNameAndMemory) {
  const engine::DeviceInfo gpu{.kind = engine::DeviceKind::kCuda,
                               .index = 1,
                               .name = "NVIDIA H200",
                               .total_memory_bytes = 150'000'000'000,
                               .free_memory_bytes = 149'000'000'000};
  const v1::Device d = DeviceProto(gpu);
  EXPECT_EQ(d.kind(), "cuda");
  EXPECT_EQ(d.name(), "NVIDIA H200");
  EXPECT_EQ(d.memory_bytes(), 150'000'000'000);
  EXPECT_EQ(d.free_memory_bytes(), 149'000'000'000);
  EXPECT_EQ(DeviceProto({.name = "cpu x4"}).kind(), "cpu");
}

TEST(ReportedDevicesTest, TheCpuWithItsMemory) {
  auto devices = ReportedDevices("cpu");
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 1u);
  const v1::Device& cpu = (*devices)[0];
  EXPECT_EQ(cpu.kind(), "cpu");
  EXPECT_EQ(cpu.name(),
            "cpu x" + std::to_string(std::thread::hardware_concurrency()));
  EXPECT_GT(cpu.memory_bytes(), 0);
  EXPECT_GT(cpu.free_memory_bytes(), 0);
  EXPECT_LE(cpu.free_memory_bytes(), cpu.memory_bytes());
}

TEST(ReportedDevicesTest, ABadChoiceNamesTheFlag) {
  auto bad = ReportedDevices("gpu0");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message().substr(0, 8), "device: ");
  if (engine::CudaDeviceCount() == 0) {
    EXPECT_EQ(ReportedDevices("cuda").status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lathe::worker
