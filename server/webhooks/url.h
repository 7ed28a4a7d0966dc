// A webhook's URL, checked when it is registered and split for the HTTP
// client when a delivery is sent.
#ifndef LATHE_SERVER_WEBHOOKS_URL_H_
#define LATHE_SERVER_WEBHOOKS_URL_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe {

constexpr size_t kMaxWebhookUrlBytes = 2048;

struct WebhookUrl {
  std::string scheme;  // "http" or "https" (lower case)
  std::string host;    // "example.com", "10.0.0.7", "[::1]"
  int port = 0;        // the URL's, else 80 / 443
  std::string target;  // path and query, at least "/"

  // "https://example.com:443", as httplib::Client takes it.
  std::string Origin() const;
};

// Absolute http:// or https:// URLs of printable ASCII, at most
// kMaxWebhookUrlBytes, with a host, without credentials (user:password@)
// or a fragment. INVALID_ARGUMENT saying what is wrong (the caller names
// the field).
absl::StatusOr<WebhookUrl> ParseWebhookUrl(absl::string_view url);

}  // namespace lathe

#endif  // LATHE_SERVER_WEBHOOKS_URL_H_
