#include "worker/engine/error_kind.h"

#include "absl/strings/cord.h"

namespace lathe::engine {
namespace {

constexpr char kKindUrl[] = "type.lathe/engine.ErrorKind";
constexpr char kFieldUrl[] = "type.lathe/engine.ErrorField";

constexpr struct {
  ErrorKind kind;
  const char* name;
} kNames[] = {{ErrorKind::kPlatform, "platform"},
              {ErrorKind::kUserData, "user_data"},
              {ErrorKind::kUserOptions, "user_options"},
              {ErrorKind::kModel, "model"}};

}  // namespace

absl::Status WithErrorKind(absl::Status status, ErrorKind kind, absl::string_view field) {
  for (const auto& n : kNames) {
    if (n.kind == kind) status.SetPayload(kKindUrl, absl::Cord(n.name));
  }
  if (!field.empty()) status.SetPayload(kFieldUrl, absl::Cord(field));
  return status;
}

ErrorKind ErrorKindOf(const absl::Status& status) {
  absl::optional<absl::Cord> name = status.GetPayload(kKindUrl);
  if (!name.has_value()) return ErrorKind::kPlatform;
  for (const auto& n : kNames) {
    if (*name == n.name) return n.kind;
  }
  return ErrorKind::kPlatform;
}

std::string ErrorFieldOf(const absl::Status& status) {
  absl::optional<absl::Cord> field = status.GetPayload(kFieldUrl);
  return field.has_value() ? std::string(*field) : "";
}

}  // namespace lathe::engine
