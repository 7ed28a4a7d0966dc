#include "server/request_limits.h"

#include "absl/strings/str_cat.h"
#include "common/echo.h"

namespace lathe {

absl::Status CheckIdField(absl::string_view field, absl::string_view value,
                          bool required) {
  if (value.empty()) {
    return required
               ? absl::InvalidArgumentError(absl::StrCat(field, ": required"))
               : absl::OkStatus();
  }
  if (value.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": longer than ", kMaxIdBytes, " bytes (", value.size(), ")"));
  }
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": \"", Echo(value),
                       "\" is not an id (printable ASCII, no spaces)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckMetadata(const std::map<std::string, std::string>& metadata) {
  if (static_cast<int>(metadata.size()) > kMaxMetadataPairs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata: ", metadata.size(), " pairs; at most ", kMaxMetadataPairs));
  }
  for (const auto& [k, v] : metadata) {
    if (k.empty() || k.size() > kMaxMetadataKeyBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata: key \"", Echo(k), "\" must be 1..",
                       kMaxMetadataKeyBytes, " bytes"));
    }
    if (v.size() > kMaxMetadataValueBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata[", Echo(k), "]: longer than ",
                       kMaxMetadataValueBytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

absl::Status NotFoundAs(absl::string_view what, absl::string_view id,
                        const absl::Status& status) {
  if (!absl::IsNotFound(status)) return status;
  return absl::NotFoundError(absl::StrCat("no such ", what, ": ", Echo(id)));
}

}  // namespace lathe
