// Transport security for lathed's ports and the channels that reach them:
// TLS from PEM files, optional mutual TLS, and plaintext only when asked
// for by name. Files are read and checked here (readable, PEM, the key
// matches the certificate) so that a bad path or a mismatched pair is a
// clear error at start-up, not a vague handshake failure later.
#ifndef LATHE_COMMON_TLS_H_
#define LATHE_COMMON_TLS_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/status/statusor.h"

namespace lathe {

// A listening port's security.
struct ServerTls {
  bool insecure = false;   // plaintext; cert/key must then be empty
  std::string cert_file;   // PEM certificate chain, e.g. "/etc/lathe/server.pem"
  std::string key_file;    // PEM private key of cert_file's first certificate
  // PEM CA bundle for client certificates. Empty: clients present none.
  std::string client_ca_file;
  // With client_ca_file: true = a client without a certificate signed by it
  // fails the handshake; false = a certificate is optional but verified
  // when presented (services then check ServerContext::auth_context()).
  bool require_client_cert = false;
};

// INVALID_ARGUMENT naming lathed's flag (--tls_cert, --tls_key,
// --worker_client_ca) when a file is missing, unreadable, not
// PEM, or the key does not belong to the certificate; or when neither TLS
// nor insecure was chosen.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTls& tls);

// How a client reaches lathed.
struct ChannelTls {
  bool insecure = false;   // plaintext
  std::string ca_file;     // PEM roots; empty = the system's roots
  std::string cert_file;   // client certificate (mutual TLS), optional
  std::string key_file;    // its key
  // Expect this name in the server's certificate instead of the target's
  // host (e.g. when dialling an IP of a server certified as a DNS name).
  std::string server_name;
};

// A channel to `target` (host:port) with `args` plus what `tls` needs.
// INVALID_ARGUMENT naming the option (ca_cert, tls_cert, tls_key) when a
// file cannot be used.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const std::string& target, const ChannelTls& tls,
    grpc::ChannelArguments args = {});

// Whether the peer of a server call presented a client certificate that
// verified against the port's client CA. Relies on the port verifying what
// it requests (MakeServerCredentials only uses the *_AND_VERIFY modes): a
// port that requests without verifying would make this true for any
// certificate.
bool PeerHasVerifiedCertificate(const grpc::AuthContext& auth);

}  // namespace lathe

#endif  // LATHE_COMMON_TLS_H_
