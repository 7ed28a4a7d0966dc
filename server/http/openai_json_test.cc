#include "server/http/openai_json.h"

#include <gtest/gtest.h>

namespace lathe::openai {
namespace {

TEST(OpenAiJsonTest, CreateRequestReadsOpenAisKeys) {
  auto r = CreateJobRequestFromJson(R"({
    "model": "lathe-demo", "training_file": "file-a", "validation_file": null,
    "suffix": "x", "seed": 42, "metadata": {"team": "a"}, "integrations": [],
    "method": {"type": "dpo", "dpo": {"hyperparameters":
      {"beta": 0.2, "n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": "auto"}}}})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model(), "lathe-demo");
  EXPECT_EQ(r->training_file(), "file-a");
  EXPECT_EQ(r->validation_file(), "");
  EXPECT_EQ(r->suffix(), "x");
  EXPECT_EQ(r->seed(), 42);
  EXPECT_EQ(r->metadata().at("team"), "a");
  EXPECT_EQ(r->method().type(), "dpo");
  const auto& h = r->method().dpo().hyperparameters();
  EXPECT_DOUBLE_EQ(h.beta(), 0.2);
  EXPECT_EQ(h.batch_size(), 2);
  EXPECT_FALSE(h.has_n_epochs());  // "auto" = unset
  EXPECT_FALSE(h.has_learning_rate_multiplier());
}

TEST(OpenAiJsonTest, LegacyHyperparametersAreTheSupervisedMethods) {
  auto r = CreateJobRequestFromJson(
      R"({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 3}})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method().type(), "supervised");
  EXPECT_EQ(r->method().supervised().hyperparameters().n_epochs(), 3);
  auto both = CreateJobRequestFromJson(
      R"({"model": "m", "hyperparameters": {}, "method": {"type": "supervised"}})");
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(both.status().message().substr(0, 16), "hyperparameters:");
}

TEST(OpenAiJsonTest, LatheExtensionsUnderTheirOwnKeysWithShortEnums) {
  auto r = CreateJobRequestFromJson(R"({"model": "m", "training_file": "f",
    "adapter": "full", "priority": "high", "lora": null,
    "method": {"type": "supervised", "supervised": {"hyperparameters":
      {"warmup_steps": 3, "lr_scheduler": "cosine"}}}})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->adapter(), v1::ADAPTER_TYPE_FULL);
  EXPECT_EQ(r->priority(), v1::JOB_PRIORITY_HIGH);
  EXPECT_EQ(r->method().supervised().hyperparameters().warmup_steps(), 3);
  EXPECT_EQ(r->method().supervised().hyperparameters().lr_scheduler(),
            v1::LR_SCHEDULER_COSINE);
  auto lora = CreateJobRequestFromJson(
      R"({"lora": {"rank": 8, "target_modules": ["q_proj"]}, "adapter": "ADAPTER_TYPE_LORA"})");
  ASSERT_TRUE(lora.ok()) << lora.status();
  EXPECT_EQ(lora->lora().rank(), 8);
  EXPECT_EQ(lora->adapter(), v1::ADAPTER_TYPE_LORA);
}

// devices is a Lathe extension: read from the body ("auto" = unset) and
// shown resolved under the job's "lathe" record.
TEST(OpenAiJsonTest, DevicesIsALatheExtension) {
  auto r = CreateJobRequestFromJson(
      R"({"model": "m", "training_file": "f", "devices": 4})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->has_devices());
  EXPECT_EQ(r->devices(), 4);
  auto auto_devices = CreateJobRequestFromJson(
      R"({"model": "m", "training_file": "f", "devices": "auto"})");
  ASSERT_TRUE(auto_devices.ok()) << auto_devices.status();
  EXPECT_FALSE(auto_devices->has_devices());
  EXPECT_EQ(CreateJobRequestFromJson(R"({"devices": "two"})").status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::Job job;
  job.set_id("ftjob-1");
  job.set_devices(4);
  EXPECT_EQ(JobObject(job)["lathe"]["devices"], 4);
}

TEST(OpenAiJsonTest, BadBodiesNameTheKey) {
  auto status = [](const char* body) {
    return std::string(CreateJobRequestFromJson(body).status().message());
  };
  EXPECT_EQ(status(R"({"bogus": 1})"), "bogus: unknown field");
  EXPECT_EQ(status(R"({"lora": {"rnk": 1}})"), "lora.rnk: unknown field");
  EXPECT_EQ(
      status(
          R"({"method": {"supervised": {"hyperparameters": {"epochs": 1}}}})"),
      "method.supervised.hyperparameters.epochs: unknown field");
  EXPECT_EQ(status(R"({"adapter": "nope"})").substr(0, 8), "adapter:");
  EXPECT_EQ(status(R"({"lora": 3})"), "lora: must be an object");
  EXPECT_EQ(status(R"({"integrations": [{"type": "wandb"}]})").substr(0, 13),
            "integrations:");
  EXPECT_EQ(status("{not json"), "body: not valid JSON");
  EXPECT_EQ(status("[1]"), "body: must be a JSON object");
  EXPECT_EQ(status(R"({"seed": "x"})").substr(0, 5), "body:");
}

TEST(OpenAiJsonTest, ErrorsAsOpenAiShapesThem) {
  auto line =
      absl::InvalidArgumentError("line 3: messages[0].role: must be user");
  EXPECT_EQ(HttpStatusOf(line), 400);
  Json e = ErrorBody(line)["error"];
  EXPECT_EQ(e["message"], "line 3: messages[0].role: must be user");
  EXPECT_EQ(e["type"], "invalid_request_error");
  EXPECT_EQ(e["param"], "messages[0].role");
  EXPECT_EQ(e["code"], "invalid_line");
  Json bare =
      ErrorBody(absl::InvalidArgumentError("line 2: not JSON"))["error"];
  EXPECT_EQ(bare["param"], "line 2");
  Json none = ErrorBody(absl::NotFoundError("no such job: ftjob-x"))["error"];
  EXPECT_TRUE(none["param"].is_null());
  EXPECT_EQ(none["code"], "not_found");
  EXPECT_EQ(HttpStatusOf(absl::NotFoundError("x")), 404);
  EXPECT_EQ(HttpStatusOf(absl::UnauthenticatedError("x")), 401);
  EXPECT_EQ(ErrorBody(absl::UnauthenticatedError("x"))["error"]["type"],
            "authentication_error");
  EXPECT_EQ(HttpStatusOf(absl::PermissionDeniedError("x")), 403);
  EXPECT_EQ(HttpStatusOf(absl::FailedPreconditionError("x")), 400);
  EXPECT_EQ(HttpStatusOf(absl::AlreadyExistsError("x")), 409);
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError(
                "file: larger than max_upload_bytes (10 bytes)")),
            413);
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError(
                "project default has 100 jobs in flight "
                "(max_jobs_in_flight_per_project)")),
            429);
  EXPECT_EQ(HttpStatusOf(absl::UnavailableError("x")), 503);
  EXPECT_EQ(HttpStatusOf(absl::InternalError("x")), 500);
}

TEST(OpenAiJsonTest, JobObjectHasEveryFieldWithNulls) {
  v1::Job job;
  job.set_id("ftjob-1");
  job.set_created_at(1700000000);
  job.set_model("lathe-demo");
  job.set_status(v1::JOB_STATUS_RUNNING);
  job.set_training_file("file-a");
  job.set_seed(3);
  job.set_project("default");
  job.mutable_method()->set_type("supervised");
  auto* h =
      job.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  h->set_n_epochs(2);
  h->set_batch_size(4);
  h->set_learning_rate_multiplier(1.5);
  job.set_trained_tokens(99);
  Json j = JobObject(job);
  EXPECT_EQ(j["object"], "fine_tuning.job");
  EXPECT_EQ(j["status"], "running");
  for (const char* k : {"finished_at", "fine_tuned_model", "validation_file",
                        "error", "estimated_finish", "integrations", "metadata",
                        "trained_tokens", "user_provided_suffix"}) {
    ASSERT_TRUE(j.contains(k)) << k;
    EXPECT_TRUE(j[k].is_null()) << k;
  }
  EXPECT_EQ(j["hyperparameters"]["n_epochs"], 2);
  EXPECT_EQ(j["hyperparameters"]["batch_size"], 4);
  EXPECT_EQ(j["hyperparameters"]["learning_rate_multiplier"], 1.5);
  EXPECT_EQ(j["method"]["type"], "supervised");
  EXPECT_EQ(j["method"]["supervised"]["hyperparameters"]["n_epochs"], 2);
  EXPECT_EQ(j["organization_id"], "default");
  EXPECT_TRUE(j["result_files"].is_array());
  EXPECT_EQ(j["lathe"]["id"], "ftjob-1");

  job.set_status(v1::JOB_STATUS_FAILED);
  job.mutable_error()->set_code("invalid_training_file");
  job.mutable_error()->set_message("line 2: bad");
  Json f = JobObject(job);
  EXPECT_EQ(f["status"], "failed");
  EXPECT_EQ(f["error"]["code"], "invalid_training_file");
  EXPECT_TRUE(f["error"]["param"].is_null());
  job.set_status(v1::JOB_STATUS_CANCELLING);
  EXPECT_EQ(JobObject(job)["status"], "cancelled");
  job.set_status(v1::JOB_STATUS_PAUSED);
  EXPECT_EQ(JobObject(job)["status"], "paused");
}

TEST(OpenAiJsonTest, EventsAndCheckpoints) {
  v1::JobEvent e;
  e.set_id("ftevent-1-2");
  e.set_created_at(1700000001);
  e.set_type("metrics");
  e.set_message("step 2");
  e.mutable_metrics()->set_step(2);
  e.mutable_metrics()->set_total_steps(10);
  e.mutable_metrics()->set_train_loss(1.25);
  (*e.mutable_metrics()->mutable_values())["valid_loss"] = 1.5;
  Json j = EventObject(e);
  EXPECT_EQ(j["object"], "fine_tuning.job.event");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["type"], "metrics");
  EXPECT_EQ(j["data"]["step"], 2);
  EXPECT_EQ(j["data"]["train_loss"], 1.25);
  EXPECT_EQ(j["data"]["valid_loss"], 1.5);
  v1::JobEvent m;
  m.set_id("ftevent-1-1");
  m.set_message("queued");
  EXPECT_TRUE(EventObject(m)["data"].is_null());
  EXPECT_EQ(EventObject(m)["type"], "message");

  v1::Job job;
  job.set_id("ftjob-1");
  job.set_model("lathe-demo");
  v1::Checkpoint c;
  c.set_id("ftckpt-1-5");
  c.set_job_id("ftjob-1");
  c.set_step_number(5);
  c.mutable_metrics()->set_train_loss(0.5);
  c.mutable_metrics()->set_valid_loss(0.75);
  Json k = CheckpointObject(c, job);
  EXPECT_EQ(k["object"], "fine_tuning.job.checkpoint");
  EXPECT_EQ(k["fine_tuned_model_checkpoint"],
            "ft:lathe-demo:ftjob-1:ckpt-step-5");
  EXPECT_EQ(k["metrics"]["step"], 5);
  EXPECT_EQ(k["metrics"]["valid_loss"], 0.75);
  EXPECT_EQ(k["metrics"]["full_valid_loss"], 0.75);
  EXPECT_FALSE(k["metrics"].contains("valid_mean_token_accuracy"));
}

TEST(OpenAiJsonTest, ListStatusRoundTrip) {
  EXPECT_EQ(*ParseStatus("running", "status"), v1::JOB_STATUS_RUNNING);
  EXPECT_EQ(*ParseStatus("cancelling", "status"), v1::JOB_STATUS_CANCELLING);
  EXPECT_EQ(ParseStatus("done", "status").status().code(),
            absl::StatusCode::kInvalidArgument);
  Json l = ListObject(Json::array({{{"id", "a"}}, {{"id", "b"}}}), true, true);
  EXPECT_EQ(l["object"], "list");
  EXPECT_EQ(l["first_id"], "a");
  EXPECT_EQ(l["last_id"], "b");
  EXPECT_EQ(l["has_more"], true);
}

}  // namespace
}  // namespace lathe::openai
