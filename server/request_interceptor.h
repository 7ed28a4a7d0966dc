// A server interceptor that gives a request gRPC could not parse a status
// a client can act on. gRPC's own answer to a request that does not
// deserialize (most often a proto3 string field holding invalid UTF-8) is
// INTERNAL with an empty message, which reads as a server bug; it becomes
// INVALID_ARGUMENT saying what to fix. Every INTERNAL status lathed sends
// itself has a message, so an empty one is gRPC's parse failure.
#ifndef LATHE_SERVER_REQUEST_INTERCEPTOR_H_
#define LATHE_SERVER_REQUEST_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace lathe {

// A finished call: its full method name ("/lathe.v1.Files/Upload"), the
// status code sent and how long the call lived, for the metrics.
using RpcObserver =
    std::function<void(const std::string& method, int code, double seconds)>;

// The unparsed-request fix, then (with `observer`) every call observed.
std::vector<
    std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RequestInterceptors(RpcObserver observer = nullptr);

}  // namespace lathe

#endif  // LATHE_SERVER_REQUEST_INTERCEPTOR_H_
