// What a third-party client sees of lathed beyond the calls themselves: the
// health service per service name, server reflection, the standard rich
// error details, and `lathed --help`.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <set>

#include "absl/strings/match.h"
#include "common/grpc_status.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/rpc/error_details.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "lathe/v1/fine_tuning.grpc.pb.h"
#include "reflection_client.grpc.pb.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class ApiSurfaceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = Cluster::Start(TestRoot("api-surface"), 0);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() { delete cluster_; }

  static grpc::Status Check(std::shared_ptr<grpc::Channel> channel,
                            const std::string& service,
                            HealthCheckResponse* out) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    HealthCheckRequest r;
    r.set_service(service);
    return stub->Check(&ctx, r, out);
  }

  // A CreateJob call answered with an error, as any gRPC client sees it.
  static grpc::Status CreateJob(const v1::CreateJobRequest& r) {
    auto stub = v1::FineTuning::NewStub(cluster_->NewChannel());
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + cluster_->api_key());
    v1::Job out;
    return stub->CreateJob(&ctx, r, &out);
  }

  static Cluster* cluster_;
};

Cluster* ApiSurfaceTest::cluster_ = nullptr;

TEST_F(ApiSurfaceTest, HealthAnswersForTheServerAndEachServiceByName) {
  for (const char* service : {"", "lathe.v1.Files", "lathe.v1.FineTuning",
                              "lathe.v1.Models", "lathe.v1.Admin",
                              "lathe.v1.Webhooks"}) {
    HealthCheckResponse r;
    grpc::Status st = Check(cluster_->NewChannel(), service, &r);
    ASSERT_TRUE(st.ok()) << "\"" << service << "\": " << st.error_message();
    EXPECT_EQ(r.status(), HealthCheckResponse::SERVING) << service;
  }
  // The worker service is served on the worker port.
  HealthCheckResponse r;
  ASSERT_TRUE(Check(cluster_->NewWorkerChannel(), "lathe.v1.Worker", &r).ok());
  EXPECT_EQ(r.status(), HealthCheckResponse::SERVING);
  EXPECT_EQ(Check(cluster_->NewChannel(), "lathe.v1.Nope", &r).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// Server reflection, as grpcurl and Postman use it, without an API key:
// the services by name, and the file defining FineTuning with its methods
// (the descriptors are public; the calls still need a key).
TEST_F(ApiSurfaceTest, ReflectionListsTheServicesAndServesTheirSchemas) {
  namespace refl = grpc::reflection::v1alpha;
  auto stub = refl::ServerReflection::NewStub(cluster_->NewChannel());
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);
  refl::ServerReflectionRequest list;
  list.set_list_services("*");
  ASSERT_TRUE(stream->Write(list));
  refl::ServerReflectionResponse listed;
  ASSERT_TRUE(stream->Read(&listed));
  ASSERT_TRUE(listed.has_list_services_response()) << listed.DebugString();
  std::set<std::string> names;
  for (const auto& s : listed.list_services_response().service()) names.insert(s.name());
  for (const char* want : {"lathe.v1.Files", "lathe.v1.FineTuning", "lathe.v1.Models",
                           "lathe.v1.Admin", "lathe.v1.Webhooks", "grpc.health.v1.Health",
                           "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_TRUE(names.count(want)) << want << " not listed";
  }

  refl::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("lathe.v1.FineTuning");
  ASSERT_TRUE(stream->Write(symbol));
  refl::ServerReflectionResponse file;
  ASSERT_TRUE(stream->Read(&file));
  ASSERT_TRUE(file.has_file_descriptor_response()) << file.DebugString();
  ASSERT_GE(file.file_descriptor_response().file_descriptor_proto_size(), 1);
  google::protobuf::FileDescriptorProto proto;
  ASSERT_TRUE(proto.ParseFromString(file.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(proto.name(), "lathe/v1/fine_tuning.proto");
  EXPECT_EQ(proto.package(), "lathe.v1");
  std::set<std::string> methods;
  for (const auto& service : proto.service()) {
    if (service.name() != "FineTuning") continue;
    for (const auto& m : service.method()) methods.insert(m.name());
  }
  for (const char* want : {"CreateJob", "GetJob", "ListJobs", "CancelJob", "WatchJob"}) {
    EXPECT_TRUE(methods.count(want)) << want;
  }

  refl::ServerReflectionRequest unknown;
  unknown.set_file_containing_symbol("lathe.v1.NoSuchService");
  ASSERT_TRUE(stream->Write(unknown));
  refl::ServerReflectionResponse error;
  ASSERT_TRUE(stream->Read(&error));
  ASSERT_TRUE(error.has_error_response()) << error.DebugString();
  EXPECT_EQ(error.error_response().error_code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ApiSurfaceTest, ErrorsCarryTheFieldAndAReasonAsStandardDetails) {
  v1::CreateJobRequest r;
  r.set_model("lathe-demo");
  r.set_training_file("file-x");
  r.mutable_lora()->set_alpha(-1);
  grpc::Status st = CreateJob(r);
  ASSERT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  google::rpc::Status rich;
  ASSERT_TRUE(ParseErrorDetails(st, &rich)) << st.error_message();
  EXPECT_EQ(rich.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(rich.message(), st.error_message());
  google::rpc::ErrorInfo info;
  google::rpc::BadRequest bad;
  for (const auto& any : rich.details()) {
    if (any.Is<google::rpc::ErrorInfo>()) ASSERT_TRUE(any.UnpackTo(&info));
    if (any.Is<google::rpc::BadRequest>()) ASSERT_TRUE(any.UnpackTo(&bad));
  }
  EXPECT_EQ(info.reason(), "INVALID_FIELD");
  EXPECT_EQ(info.domain(), "lathe.v1");
  EXPECT_EQ(info.metadata().at("field"), "lora.alpha");
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "lora.alpha");
  EXPECT_EQ(bad.field_violations(0).description(), "must be in (0, 65536]");

  // NOT_FOUND names the field too, without a BadRequest.
  r.clear_lora();
  st = CreateJob(r);
  ASSERT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(ParseErrorDetails(st, &rich));
  ASSERT_EQ(rich.details_size(), 1);
  ASSERT_TRUE(rich.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "NOT_FOUND");
  EXPECT_EQ(info.metadata().at("field"), "training_file");
}

TEST(ErrorDetailsTest, LinesAndLimitsAreNamed) {
  google::rpc::Status rich;
  google::rpc::ErrorInfo info;
  google::rpc::BadRequest bad;
  ASSERT_TRUE(ParseErrorDetails(
      ToGrpcStatus(absl::InvalidArgumentError(
          "line 2: messages[1].role: unknown role \"robot\"")),
      &rich));
  ASSERT_EQ(rich.details_size(), 2);
  ASSERT_TRUE(rich.details(0).UnpackTo(&info));
  ASSERT_TRUE(rich.details(1).UnpackTo(&bad));
  EXPECT_EQ(info.reason(), "INVALID_LINE");
  EXPECT_EQ(info.metadata().at("line"), "2");
  EXPECT_EQ(info.metadata().at("field"), "messages[1].role");
  EXPECT_EQ(bad.field_violations(0).field(), "line 2: messages[1].role");
  EXPECT_EQ(bad.field_violations(0).description(), "unknown role \"robot\"");
  ASSERT_TRUE(ParseErrorDetails(
      ToGrpcStatus(absl::ResourceExhaustedError(
          "line 51: more than 50 examples (max_examples_per_file)")),
      &rich));
  ASSERT_TRUE(rich.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "LIMIT_EXCEEDED");
  EXPECT_EQ(info.metadata().at("limit"), "max_examples_per_file");
  EXPECT_EQ(info.metadata().at("line"), "51");
  // A message that names nothing gets a reason only.
  ASSERT_TRUE(ParseErrorDetails(
      ToGrpcStatus(absl::UnavailableError("lathed is shutting down")), &rich));
  ASSERT_EQ(rich.details_size(), 1);
  ASSERT_TRUE(rich.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "UNAVAILABLE");
  EXPECT_TRUE(info.metadata().empty());
}

TEST(LathedHelpTest, HelpListsTheFlags) {
  std::string out;
  FILE* p = popen((Binaries().lathed + " --help 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  EXPECT_FALSE(absl::StrContains(out, "No flags matched")) << out;
  for (const char* flag :
       {"--listen", "--data_dir", "--max_attempts", "--tls_cert"}) {
    EXPECT_TRUE(absl::StrContains(out, flag)) << flag << " missing from:\n"
                                              << out;
  }
}

}  // namespace
}  // namespace lathe::testing
