// The devices a worker reports to lathed, in the worker protocol's terms.
#ifndef LATHE_WORKER_AGENT_DEVICE_REPORT_H_
#define LATHE_WORKER_AGENT_DEVICE_REPORT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lathe/v1/worker.pb.h"
#include "worker/engine/device/device_inventory.h"

namespace lathe::worker {

// `info` as a v1::Device: kind "cpu" or "cuda", name, total and free memory.
v1::Device DeviceProto(const engine::DeviceInfo& info);

// The devices a worker started with --device `device` trains on, with their
// memory now (engine::ChosenDevices). Its errors: INVALID_ARGUMENT or
// FAILED_PRECONDITION naming `device`.
absl::StatusOr<std::vector<v1::Device>> ReportedDevices(
    absl::string_view device);

}  // namespace lathe::worker

#endif  // LATHE_WORKER_AGENT_DEVICE_REPORT_H_
