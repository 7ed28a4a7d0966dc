// A server interceptor that gives a request gRPC could not parse a status
// a client can act on. gRPC's own answer to a request that does not
// deserialize (most often a proto3 string field holding invalid UTF-8) is
// INTERNAL with an empty message, which reads as a server bug; it becomes
// INVALID_ARGUMENT saying what to fix. Every INTERNAL status lathed sends
// itself has a message, so an empty one is gRPC's parse failure.
#ifndef LATHE_SERVER_REQUEST_INTERCEPTOR_H_
#define LATHE_SERVER_REQUEST_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <vector>

namespace lathe {

std::vector<
    std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RequestInterceptors();

}  // namespace lathe

#endif  // LATHE_SERVER_REQUEST_INTERCEPTOR_H_
