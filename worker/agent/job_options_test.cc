#include "worker/agent/job_options.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/message_differencer.h"

namespace lathe::worker {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// Fields settled on the server that the engine never needs: job resolution
// turns the multiplier into hyperparameters.learning_rate.
const std::set<std::string> kServerOnly = {
    "lathe.v1.Hyperparameters.learning_rate_multiplier",
};

// Sets every field of `m` to a value of its own (the n-th field gets
// numbers around n), enums to their last value, repeated strings to two
// distinct known names.
void SetEveryField(Message& m) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (kServerOnly.count(f->full_name())) continue;
    const int n = i + 2;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(&m, f, 10 * n + 1);
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(&m, f, 10 * n + 3);
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(&m, f, 0.125 * n);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(&m, f, true);
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(&m, f, f->enum_type()->value(f->enum_type()->value_count() - 1));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        ASSERT_TRUE(f->is_repeated()) << f->full_name() << ": give it a test value";
        r->AddString(&m, f, "up_proj");
        r->AddString(&m, f, "q_proj");
        break;
      default:
        FAIL() << f->full_name() << ": a field of a kind this test does not fill";
    }
  }
}

v1::Job EveryFieldJob(v1::AdapterType adapter) {
  v1::Job job;
  job.set_model("lathe-demo");
  job.set_seed(1234);
  job.set_adapter(adapter);
  job.mutable_method()->set_type("supervised");
  SetEveryField(*job.mutable_method()->mutable_supervised()->mutable_hyperparameters());
  if (adapter == v1::ADAPTER_TYPE_LORA) SetEveryField(*job.mutable_lora());
  return job;
}

TEST(JobOptionsTest, EveryResolvedSettingReachesTheEngineAndBack) {
  for (v1::AdapterType adapter : {v1::ADAPTER_TYPE_LORA, v1::ADAPTER_TYPE_FULL}) {
    v1::Job job = EveryFieldJob(adapter);
    auto options = TrainOptionsForJob(job);
    ASSERT_TRUE(options.ok()) << options.status();
    v1::Job back = JobForTrainOptions(*options);
    google::protobuf::util::MessageDifferencer diff;
    std::string report;
    diff.ReportDifferencesToString(&report);
    EXPECT_TRUE(diff.Compare(job, back)) << v1::AdapterType_Name(adapter) << ":\n" << report;
  }
}

TEST(JobOptionsTest, TheValuesLandInTheirEngineFields) {
  v1::Job job = EveryFieldJob(v1::ADAPTER_TYPE_LORA);
  auto* hp = job.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_lr_scheduler(v1::LR_SCHEDULER_COSINE);
  hp->set_max_seq_len(384);
  hp->set_learning_rate(3e-4);
  job.mutable_lora()->set_rank(16);
  job.mutable_lora()->set_use_rslora(true);
  auto o = TrainOptionsForJob(job);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->method, "lora");
  EXPECT_EQ(o->lr_scheduler, "cosine");
  EXPECT_EQ(o->max_seq_len, 384);
  EXPECT_DOUBLE_EQ(o->learning_rate, 3e-4);
  EXPECT_EQ(o->lora.rank, 16);
  EXPECT_TRUE(o->lora.use_rslora);
  EXPECT_EQ(o->seed, 1234u);
  job.set_adapter(v1::ADAPTER_TYPE_FULL);
  EXPECT_EQ(TrainOptionsForJob(job)->method, "full");
}

TEST(JobOptionsTest, UnresolvedValuesAreRefusedByName) {
  v1::Job job = EveryFieldJob(v1::ADAPTER_TYPE_LORA);
  job.set_adapter(v1::ADAPTER_TYPE_UNSPECIFIED);
  EXPECT_EQ(TrainOptionsForJob(job).status().message().substr(0, 8), "adapter:");
  job.set_adapter(v1::ADAPTER_TYPE_LORA);
  job.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_lr_scheduler(
      v1::LR_SCHEDULER_UNSPECIFIED);
  EXPECT_TRUE(absl::IsInvalidArgument(TrainOptionsForJob(job).status()));
}

}  // namespace
}  // namespace lathe::worker
