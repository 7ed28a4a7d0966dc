#include "worker/agent/device_report.h"

#include <string>

#include "common/status_macros.h"

namespace lathe::worker {

v1::Device DeviceProto(const engine::DeviceInfo& info) {
  v1::Device d;
  d.set_kind(std::string(engine::DeviceKindName(info.kind)));
  d.set_name(info.name);
  d.set_memory_bytes(info.total_memory_bytes);
  d.set_free_memory_bytes(info.free_memory_bytes);
  return d;
}

absl::StatusOr<std::vector<v1::Device>> ReportedDevices(
    absl::string_view device) {
  ASSIGN_OR_RETURN(std::vector<engine::DeviceInfo> chosen,
                   engine::ChosenDevices(device));
  std::vector<v1::Device> out;
  out.reserve(chosen.size());
  for (const engine::DeviceInfo& info : chosen)
    out.push_back(DeviceProto(info));
  return out;
}

}  // namespace lathe::worker
