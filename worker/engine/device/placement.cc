#include "worker/engine/device/placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/device/device.h"
#include "worker/engine/error_kind.h"

namespace lathe::engine {
namespace {

// The device section's name for a field, in errors of the shared parsers.
absl::Status InSection(const absl::Status& status, const char* field) {
  if (status.ok()) return status;
  const ErrorKind kind = absl::IsInvalidArgument(status)
                             ? ErrorKind::kUserOptions
                             : ErrorKind::kPlatform;
  // The parsers name their field ("device: …"): only the section is added.
  const std::string message(status.message());
  const std::string own = absl::StrCat(field, ": ");
  return WithErrorKind(
      absl::Status(status.code(),
                   message.rfind(own, 0) == 0
                       ? absl::StrCat("device.", message)
                       : absl::StrCat("device.", own, message)),
      kind);
}

}  // namespace

absl::StatusOr<Placement> ResolvePlacement(const DeviceSpec& spec) {
  RETURN_IF_ERROR(Validate(spec));
  Placement p;
  absl::StatusOr<torch::Device> device = ParseDevice(spec.device);
  RETURN_IF_ERROR(InSection(device.status(), "device"));
  p.device = *device;
  absl::StatusOr<torch::ScalarType> dtype = ResolveDtype(spec.dtype, p.device);
  RETURN_IF_ERROR(InSection(dtype.status(), "dtype"));
  p.compute = *dtype;
  return p;
}

void ShareCpuThreads(int runs) {
  if (runs <= 1) return;
  // The count before any run divided it.
  static const int all = torch::get_num_threads();
  torch::set_num_threads(std::max(1, all / runs));
}

}  // namespace lathe::engine
