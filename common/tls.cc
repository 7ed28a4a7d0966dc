#include "common/tls.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <sstream>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/auth_context.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lathe {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read \"", path, "\""));
  }
  std::ostringstream s;
  s << in.rdbuf();
  std::string pem = s.str();
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": \"", path, "\" is not a PEM file"));
  }
  return pem;
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioDeleter> MemBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioDeleter>(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of `pem`, checked for being in its validity period
// (of a CA bundle, the first CA: the usual single-CA file).
absl::StatusOr<std::unique_ptr<X509, X509Deleter>> ParseCert(const std::string& flag,
                                                              const std::string& path,
                                                              const std::string& pem) {
  auto bio = MemBio(pem);
  std::unique_ptr<X509, X509Deleter> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": \"", path, "\" holds no PEM certificate"));
  }
  // X509_cmp_current_time: < 0 before now, > 0 after, 0 on a bad time.
  const int not_after = X509_cmp_current_time(X509_get0_notAfter(cert.get()));
  const int not_before = X509_cmp_current_time(X509_get0_notBefore(cert.get()));
  if (not_after == 0 || not_before == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": the certificate in \"", path, "\" has an unreadable validity period"));
  }
  if (not_after < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": the certificate in \"", path, "\" has expired; issue a new one"));
  }
  if (not_before > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": the certificate in \"", path, "\" is not valid yet (check the clock)"));
  }
  return cert;
}

// Checks that `key_pem` parses and belongs to the first certificate of
// `cert_pem`.
absl::Status CheckPair(const std::string& cert_flag, const std::string& cert_path,
                       const std::string& cert_pem, const std::string& key_flag,
                       const std::string& key_path, const std::string& key_pem) {
  ASSIGN_OR_RETURN(auto cert, ParseCert(cert_flag, cert_path, cert_pem));
  auto bio = MemBio(key_pem);
  // A callback that supplies no passphrase: an encrypted key is refused
  // here instead of OpenSSL prompting on the terminal.
  pem_password_cb* no_passphrase = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!key) {
    return absl::InvalidArgumentError(absl::StrCat(
        key_flag, ": \"", key_path, "\" holds no unencrypted PEM private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, ": \"", key_path, "\" is not the key of the certificate in \"",
                     cert_path, "\""));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTls& tls) {
  const std::string cert_flag = "--tls_cert";
  const std::string key_flag = "--tls_key";
  if (tls.insecure) {
    if (!tls.cert_file.empty() || !tls.key_file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--insecure: drop it, or drop ", cert_flag, " and ", key_flag));
    }
    return grpc::InsecureServerCredentials();
  }
  if (tls.cert_file.empty() || tls.key_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        cert_flag, ", ", key_flag, ": TLS needs a certificate and its key (",
        "scripts/make-certs.sh makes a private CA and both); or pass --insecure ",
        "to serve plaintext on a trusted network"));
  }
  ASSIGN_OR_RETURN(std::string cert, ReadPem(cert_flag, tls.cert_file));
  ASSIGN_OR_RETURN(std::string key, ReadPem(key_flag, tls.key_file));
  RETURN_IF_ERROR(CheckPair(cert_flag, tls.cert_file, cert, key_flag, tls.key_file, key));
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({key, cert});
  if (!tls.client_ca_file.empty()) {
    const std::string ca_flag = "--worker_client_ca";
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(ca_flag, tls.client_ca_file));
    RETURN_IF_ERROR(ParseCert(ca_flag, tls.client_ca_file, options.pem_root_certs).status());
    options.client_certificate_request =
        tls.require_client_cert
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelTls& tls,
                                                           grpc::ChannelArguments args) {
  if (tls.insecure) {
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions options;
  if (!tls.ca_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem("ca_cert", tls.ca_file));
    RETURN_IF_ERROR(ParseCert("ca_cert", tls.ca_file, options.pem_root_certs).status());
  }
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert, tls_key: a client certificate needs both");
  }
  if (!tls.cert_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_cert_chain, ReadPem("tls_cert", tls.cert_file));
    ASSIGN_OR_RETURN(options.pem_private_key, ReadPem("tls_key", tls.key_file));
    RETURN_IF_ERROR(CheckPair("tls_cert", tls.cert_file, options.pem_cert_chain, "tls_key",
                              tls.key_file, options.pem_private_key));
  }
  if (!tls.server_name.empty()) {
    args.SetSslTargetNameOverride(tls.server_name);
  }
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(options), args);
}

bool PeerHasVerifiedCertificate(const grpc::AuthContext& auth) {
  // gRPC only exposes a client certificate once it has verified it against
  // the port's client CA (REQUEST_*_AND_VERIFY); a failed check fails the
  // handshake instead.
  return !auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME).empty();
}

}  // namespace lathe
