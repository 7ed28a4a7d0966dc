// Webhook secrets and signatures as the Standard Webhooks specification
// (standardwebhooks.com) defines them: a secret "whsec_<base64 key>", and
// the signature "v1,<base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))>"
// sent in the webhook-signature header, so that any of its verifier
// libraries checks Lathe's deliveries.
#ifndef LATHE_SERVER_WEBHOOKS_SIGNATURE_H_
#define LATHE_SERVER_WEBHOOKS_SIGNATURE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe {

// "whsec_" + base64 of 24 bytes from OpenSSL's random generator (192 bits).
// INTERNAL if the generator fails.
absl::StatusOr<std::string> NewWebhookSecret();

// The webhook-signature value of message `id` sent at `timestamp` (Unix
// seconds) with `body`. INVALID_ARGUMENT unless `secret` is "whsec_"
// followed by non-empty base64.
absl::StatusOr<std::string> SignWebhook(absl::string_view secret,
                                        absl::string_view id, int64_t timestamp,
                                        absl::string_view body);

}  // namespace lathe

#endif  // LATHE_SERVER_WEBHOOKS_SIGNATURE_H_
