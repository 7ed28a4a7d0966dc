#include "server/request_interceptor.h"

#include <chrono>

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

// Counts each call by method and status, with its duration.
class ObservingInterceptor final : public grpc::experimental::Interceptor {
 public:
  ObservingInterceptor(const RpcObserver& observer, std::string method)
      : observer_(observer),
        method_(std::move(method)),
        start_(std::chrono::steady_clock::now()) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      observer_(method_, static_cast<int>(methods->GetSendStatus().error_code()),
                std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                              start_)
                    .count());
    }
    methods->Proceed();
  }

 private:
  const RpcObserver& observer_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
};

class ObservingFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ObservingFactory(RpcObserver observer)
      : observer_(std::move(observer)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new ObservingInterceptor(observer_, info->method() ? info->method() : "");
  }

 private:
  const RpcObserver observer_;
};

}  // namespace

std::vector<
    std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RequestInterceptors(RpcObserver observer) {
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      out;
  out.push_back(std::make_unique<Factory>());
  if (observer) out.push_back(std::make_unique<ObservingFactory>(std::move(observer)));
  return out;
}

}  // namespace lathe
