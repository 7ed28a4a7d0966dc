#include "server/webhooks/url.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/echo.h"

namespace lathe {
namespace {

bool HostChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '-' || c == '_';
}

bool Ipv6Char(char c) {
  return absl::ascii_isxdigit(static_cast<unsigned char>(c)) || c == ':' ||
         c == '.';
}

}  // namespace

std::string WebhookUrl::Origin() const {
  return absl::StrCat(scheme, "://", host, ":", port);
}

absl::StatusOr<WebhookUrl> ParseWebhookUrl(absl::string_view url) {
  if (url.empty()) return absl::InvalidArgumentError("required");
  if (url.size() > kMaxWebhookUrlBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "longer than ", kMaxWebhookUrlBytes, " bytes (", url.size(), ")"));
  }
  for (char c : url) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", Echo(url),
          "\" holds a space, a control or a non-ASCII character (percent-"
          "encode it; an international domain name in its xn-- form)"));
    }
  }
  WebhookUrl out;
  absl::string_view rest = url;
  if (absl::StartsWithIgnoreCase(rest, "https://")) {
    out.scheme = "https";
    out.port = 443;
  } else if (absl::StartsWithIgnoreCase(rest, "http://")) {
    out.scheme = "http";
    out.port = 80;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", Echo(url), "\" is not an absolute http:// or https:// URL"));
  }
  rest.remove_prefix(out.scheme.size() + 3);
  if (absl::StrContains(rest, '#')) {
    return absl::InvalidArgumentError(
        "has a fragment (#…), which is never sent to the server");
  }
  size_t end = rest.find_first_of("/?");
  absl::string_view authority = rest.substr(0, end);
  absl::string_view target =
      end == absl::string_view::npos ? "" : rest.substr(end);
  if (absl::StrContains(authority, '@')) {
    return absl::InvalidArgumentError(
        "carries credentials (user:password@); authenticate the deliveries "
        "by their signature instead");
  }
  absl::string_view host = authority;
  absl::string_view port;
  if (absl::StartsWith(authority, "[")) {
    size_t close = authority.find(']');
    if (close == absl::string_view::npos || close < 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad IPv6 host in \"", Echo(url), "\""));
    }
    host = authority.substr(0, close + 1);
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty() && !absl::ConsumePrefix(&after, ":")) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad IPv6 host in \"", Echo(url), "\""));
    }
    port = after;
    for (char c : host.substr(1, host.size() - 2)) {
      if (!Ipv6Char(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad IPv6 host in \"", Echo(url), "\""));
      }
    }
  } else {
    size_t colon = authority.find(':');
    if (colon != absl::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
    }
    for (char c : host) {
      if (!HostChar(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad host in \"", Echo(url), "\""));
      }
    }
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", Echo(url), "\" has no host"));
  }
  if (authority.size() > host.size()) {
    int n = 0;
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
        !absl::SimpleAtoi(port, &n) || n < 1 || n > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad port in \"", Echo(url), "\" (1..65535)"));
    }
    out.port = n;
  }
  out.host = absl::AsciiStrToLower(host);
  out.target = absl::StartsWith(target, "/") ? std::string(target)
                                             : absl::StrCat("/", target);
  return out;
}

}  // namespace lathe
