#include "server/webhooks/signature.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace lathe {
namespace {

constexpr absl::string_view kSecretPrefix = "whsec_";
constexpr int kSecretBytes = 24;

}  // namespace

absl::StatusOr<std::string> NewWebhookSecret() {
  unsigned char key[kSecretBytes];
  if (RAND_bytes(key, sizeof(key)) != 1) {
    return absl::InternalError("cannot draw random bytes for a webhook secret");
  }
  return absl::StrCat(kSecretPrefix,
                      absl::Base64Escape(absl::string_view(
                          reinterpret_cast<char*>(key), sizeof(key))));
}

absl::StatusOr<std::string> SignWebhook(absl::string_view secret,
                                        absl::string_view id, int64_t timestamp,
                                        absl::string_view body) {
  std::string key;
  if (!absl::ConsumePrefix(&secret, kSecretPrefix) ||
      !absl::Base64Unescape(secret, &key) || key.empty()) {
    return absl::InvalidArgumentError(
        "secret: not \"whsec_\" followed by base64");
  }
  std::string content = absl::StrCat(id, ".", timestamp, ".", body);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(content.data()),
           content.size(), mac, &mac_len) == nullptr) {
    return absl::InternalError("HMAC-SHA256 failed");
  }
  return absl::StrCat("v1,", absl::Base64Escape(absl::string_view(
                                 reinterpret_cast<const char*>(mac), mac_len)));
}

}  // namespace lathe
