#include "server/request_interceptor.h"

#include "common/grpc_status.h"

namespace lathe {
namespace {

using grpc::experimental::InterceptionHookPoints;

class UnparsedRequestInterceptor final
    : public grpc::experimental::Interceptor {
 public:
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status sent = methods->GetSendStatus();
      if (sent.error_code() == grpc::StatusCode::INTERNAL &&
          sent.error_message().empty()) {
        methods->ModifySendStatus(ToGrpcStatus(absl::InvalidArgumentError(
            "request: not a valid message for this method: a string field "
            "holds "
            "bytes that are not UTF-8 (proto3 strings must be UTF-8; send "
            "bytes "
            "as UTF-8 text), or the message is malformed")));
      }
    }
    methods->Proceed();
  }
};

class Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    return new UnparsedRequestInterceptor();
  }
};

}  // namespace

std::vector<
    std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RequestInterceptors() {
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      out;
  out.push_back(std::make_unique<Factory>());
  return out;
}

}  // namespace lathe
