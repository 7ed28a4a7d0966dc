// Webhooks without gRPC: signatures against independent references, the
// retry schedule, URLs, payloads, the outbox in the store, the operations,
// and the dispatcher against an HTTP receiver in this process.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/ids.h"
#include "server/operations/operations.h"
#include "server/webhooks/dispatcher.h"
#include "server/webhooks/event_types.h"
#include "server/webhooks/payload.h"
#include "server/webhooks/retry.h"
#include "server/webhooks/signature.h"
#include "server/webhooks/url.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;

// --- Signatures -----------------------------------------------------------

// The Standard Webhooks specification's own example, as its reference
// libraries test it (standard-webhooks/standard-webhooks, libraries/*):
// checked independently with Python's hmac when this test was written.
TEST(WebhookSignatureTest, StandardWebhooksVector) {
  auto sig = SignWebhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                         "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                         R"({"test": 2432232314})");
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ(*sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

// A fresh secret and body signed here and by Python's hmac module.
TEST(WebhookSignatureTest, AgreesWithPythonHmac) {
  auto secret = NewWebhookSecret();
  ASSERT_TRUE(secret.ok());
  const std::string id = "msg_abc", body = R"({"id":"msg_abc","x":[1,2]})";
  const int64_t ts = 1733230000;
  std::string script = absl::StrCat(
      "import base64,hashlib,hmac,sys\n"
      "key=base64.b64decode('",
      secret->substr(6),
      "')\n"
      "msg=b'",
      id, ".", ts, ".' + base64.b64decode('", absl::Base64Escape(body),
      "')\n"
      "sys.stdout.write('v1,'+base64.b64encode(hmac.new(key,msg,hashlib.sha256)"
      ".digest()).decode())\n");
  std::string path = (fs::temp_directory_path() /
                      absl::StrCat("lathe-hmac-", ::getpid(), ".py"))
                         .string();
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(script.c_str(), f);
  std::fclose(f);
  FILE* p = ::popen(absl::StrCat("/usr/bin/python3 ", path).c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {0};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, p);
  ASSERT_EQ(::pclose(p), 0);
  fs::remove(path);
  auto sig = SignWebhook(*secret, id, ts, body);
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(*sig, std::string(buf, n));
}

TEST(WebhookSignatureTest, SecretsAreRandom24Bytes) {
  auto a = NewWebhookSecret(), b = NewWebhookSecret();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  ASSERT_TRUE(absl::StartsWith(*a, "whsec_"));
  std::string key;
  ASSERT_TRUE(absl::Base64Unescape(a->substr(6), &key));
  EXPECT_EQ(key.size(), 24u);
  EXPECT_TRUE(
      absl::IsInvalidArgument(SignWebhook("nope", "m", 1, "").status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(SignWebhook("whsec_", "m", 1, "").status()));
}

// --- Retry schedule -------------------------------------------------------

TEST(WebhookRetryTest, StandardScheduleScaledByBase) {
  WebhookRetryOptions o;  // 5 s, 8 attempts
  std::vector<absl::Duration> want = {
      absl::Seconds(5), absl::Minutes(5), absl::Minutes(30), absl::Hours(2),
      absl::Hours(5),   absl::Hours(10),  absl::Hours(10)};
  for (int made = 1; made <= 7; ++made) {
    EXPECT_EQ(WebhookRetryDelay(o, made), want[made - 1]) << made;
  }
  EXPECT_EQ(WebhookRetryDelay(o, 8), std::nullopt);
  o.base = absl::Milliseconds(200);
  o.max_attempts = 3;
  EXPECT_EQ(WebhookRetryDelay(o, 1), absl::Milliseconds(200));
  EXPECT_EQ(WebhookRetryDelay(o, 2), absl::Seconds(12));
  EXPECT_EQ(WebhookRetryDelay(o, 3), std::nullopt);
  o.max_attempts = 1;  // no retry at all
  EXPECT_EQ(WebhookRetryDelay(o, 1), std::nullopt);
}

// --- URLs -----------------------------------------------------------------

TEST(WebhookUrlTest, SplitsAbsoluteHttpUrls) {
  auto u = ParseWebhookUrl("HTTPS://Hooks.Example.com/lathe?team=nlp");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->scheme, "https");
  EXPECT_EQ(u->host, "hooks.example.com");
  EXPECT_EQ(u->port, 443);
  EXPECT_EQ(u->target, "/lathe?team=nlp");
  EXPECT_EQ(u->Origin(), "https://hooks.example.com:443");
  u = ParseWebhookUrl("http://127.0.0.1:8080");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->target, "/");
  u = ParseWebhookUrl("http://[::1]:9000/h");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "[::1]");
  EXPECT_EQ(u->port, 9000);
}

TEST(WebhookUrlTest, RefusesWhatCannotBeSentSafely) {
  struct Case {
    const char* url;
    const char* says;
  };
  for (const Case& c : std::vector<Case>{
           {"", "required"},
           {"ftp://example.com/", "http:// or https://"},
           {"example.com/hook", "http:// or https://"},
           {"/hook", "http:// or https://"},
           {"https://user:pw@example.com/", "credentials"},
           {"https://example.com/#frag", "fragment"},
           {"https:///hook", "no host"},
           {"https://example.com:0/", "port"},
           {"https://example.com:99999/", "port"},
           {"https://example.com:/", "port"},
           {"https://exa mple.com/", "space"},
           {"https://ex\xc3\xa4mple.com/", "non-ASCII"},
           {"https://[::1/", "IPv6"},
           {"https://exa$mple.com/", "bad host"},
       }) {
    auto u = ParseWebhookUrl(c.url);
    ASSERT_FALSE(u.ok()) << c.url;
    EXPECT_TRUE(absl::IsInvalidArgument(u.status()));
    EXPECT_TRUE(absl::StrContains(u.status().message(), c.says))
        << c.url << ": " << u.status();
  }
  EXPECT_FALSE(
      ParseWebhookUrl("https://e.com/" + std::string(kMaxWebhookUrlBytes, 'a'))
          .ok());
}

// --- Event types and payloads ---------------------------------------------

TEST(WebhookEventTypesTest, NamesAndWhichEventIsWhich) {
  for (auto t : {WebhookEventType::kSucceeded, WebhookEventType::kFailed,
                 WebhookEventType::kCancelled, WebhookEventType::kRunning,
                 WebhookEventType::kPaused, WebhookEventType::kMetrics}) {
    EXPECT_EQ(ParseWebhookEventType(WebhookEventTypeName(t)), t);
  }
  EXPECT_EQ(ParseWebhookEventType("fine_tuning.job.queued"), std::nullopt);
  v1::JobEvent e;
  e.set_type("message");
  EXPECT_EQ(WebhookEventTypeOf(e), std::nullopt);  // a plain message
  e.set_status(v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(WebhookEventTypeOf(e), std::nullopt);  // no such webhook event
  e.set_status(v1::JOB_STATUS_SUCCEEDED);
  EXPECT_EQ(WebhookEventTypeOf(e), WebhookEventType::kSucceeded);
  e.set_status(v1::JOB_STATUS_CANCELLED);
  EXPECT_EQ(WebhookEventTypeOf(e), WebhookEventType::kCancelled);
  v1::JobEvent m;
  m.set_type("metrics");
  EXPECT_EQ(WebhookEventTypeOf(m), WebhookEventType::kMetrics);
}

TEST(WebhookPayloadTest, ShapedAsOpenAiEvents) {
  v1::Job job;
  job.set_id("ftjob-1");
  job.set_fine_tuned_model("ft:tiny:x");
  job.set_trained_tokens(640);
  v1::JobEvent e;
  e.set_id("ftevent-1-9");
  e.set_type("message");
  e.set_message("The job has successfully completed: ft:tiny:x");
  e.set_status(v1::JOB_STATUS_SUCCEEDED);
  auto body = nlohmann::json::parse(
      WebhookPayload("msg_1", 1733230000, "fine_tuning.job.succeeded", job, e));
  EXPECT_EQ(body["id"], "msg_1");
  EXPECT_EQ(body["object"], "event");
  EXPECT_EQ(body["created_at"], 1733230000);
  EXPECT_EQ(body["type"], "fine_tuning.job.succeeded");
  EXPECT_EQ(body["data"]["id"], "ftjob-1");
  EXPECT_EQ(body["data"]["object"], "fine_tuning.job");
  EXPECT_EQ(body["data"]["status"], "succeeded");
  EXPECT_EQ(body["data"]["event_id"], "ftevent-1-9");
  EXPECT_EQ(body["data"]["fine_tuned_model"], "ft:tiny:x");
  EXPECT_EQ(body["data"]["trained_tokens"], 640);
  EXPECT_FALSE(body["data"].contains("error"));

  job.mutable_error()->set_code("invalid_training_file");
  job.mutable_error()->set_message("line 3: bad role");
  e.set_status(v1::JOB_STATUS_FAILED);
  body = nlohmann::json::parse(
      WebhookPayload("msg_2", 1, "fine_tuning.job.failed", job, e));
  EXPECT_EQ(body["data"]["status"], "failed");
  EXPECT_EQ(body["data"]["error"]["code"], "invalid_training_file");
  EXPECT_TRUE(body["data"]["error"]["param"].is_null());
  EXPECT_FALSE(body["data"].contains("fine_tuned_model"));
}

TEST(WebhookPayloadTest, MetricsCarryEveryMetricsField) {
  v1::Job job;
  job.set_id("ftjob-1");
  v1::JobEvent e;
  e.set_type("metrics");
  e.mutable_metrics()->set_step(12);
  e.mutable_metrics()->set_train_loss(0.5);
  (*e.mutable_metrics()->mutable_values())["valid_loss"] = 0.75;
  auto body = nlohmann::json::parse(
      WebhookPayload("msg_3", 1, "fine_tuning.job.metrics", job, e));
  const auto& m = body["data"]["metrics"];
  EXPECT_FALSE(body["data"].contains("status"));
  EXPECT_EQ(m["step"], 12);  // a number, not proto JSON's "12"
  EXPECT_EQ(m["train_loss"], 0.5);
  EXPECT_EQ(m["values"]["valid_loss"], 0.75);
  // Every field of Metrics is there, so one added later cannot be missed.
  EXPECT_EQ(static_cast<int>(m.size()),
            v1::Metrics::descriptor()->field_count());
}

// --- The outbox in the store ----------------------------------------------

class WebhookStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = *store::Store::Open(":memory:");
    for (const char* project : {"p", "q"}) {
      v1::File f;
      f.set_id(absl::StrCat("file-", project));
      f.set_project(project);
      f.set_filename("train.jsonl");
      f.set_purpose("fine-tune");
      f.set_sha256(std::string(64, 'a'));
      f.set_format("chat");
      ASSERT_TRUE(store_->InsertFile(f).ok());
    }
  }

  // Port 1: nothing listens there.
  v1::Webhook Hook(const std::string& project, std::vector<std::string> types,
                   const std::string& url = "http://127.0.0.1:1/hook") {
    v1::Webhook w;
    w.set_id(NewId("wh"));
    w.set_project(project);
    w.set_url(url);
    w.set_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    w.set_created_at(NowUnixSeconds());
    for (auto& t : types) w.add_event_types(t);
    EXPECT_TRUE(store_->InsertWebhook(w, 16).ok());
    return w;
  }

  std::string Job(const std::string& project) {
    v1::Job j;
    j.set_id(NewId("ftjob"));
    j.set_project(project);
    j.set_status(v1::JOB_STATUS_QUEUED);
    j.set_model("tiny");
    j.set_training_file(absl::StrCat("file-", project));
    EXPECT_TRUE(store_->CreateJob(j, "", "").ok());
    return j.id();
  }

  void Run(const std::string& job) {
    store::TransitionUpdate u;
    u.attempt = 1;
    ASSERT_TRUE(store_
                    ->Transition(job, v1::JOB_STATUS_QUEUED,
                                 v1::JOB_STATUS_RUNNING, std::nullopt, u)
                    .ok());
  }

  std::vector<v1::WebhookDelivery> Deliveries(const v1::Webhook& w) {
    auto page = store_->ListWebhookDeliveries(w.id(), 100, "");
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? page->data : std::vector<v1::WebhookDelivery>{};
  }

  std::unique_ptr<store::Store> store_;
};

TEST_F(WebhookStoreTest, WebhooksRoundTripPerProject) {
  v1::Webhook a =
      Hook("p", {"fine_tuning.job.succeeded", "fine_tuning.job.metrics"});
  v1::Webhook b = Hook("p", {"fine_tuning.job.failed"});
  Hook("q", {"fine_tuning.job.failed"});
  auto got = store_->GetWebhook(a.id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->secret(), a.secret());
  EXPECT_EQ(got->event_types_size(), 2);
  EXPECT_EQ(got->event_types(1), "fine_tuning.job.metrics");
  auto page = store_->ListWebhooks("p", 1, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->data.size(), 1u);
  EXPECT_EQ(page->data[0].id(), b.id());  // newest first
  EXPECT_TRUE(page->data[0].secret().empty());
  EXPECT_TRUE(page->has_more);
  page = store_->ListWebhooks("p", 1, b.id());
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->data[0].id(), a.id());
  EXPECT_FALSE(page->has_more);
  EXPECT_TRUE(
      absl::IsInvalidArgument(store_->ListWebhooks("q", 1, b.id()).status()));
  EXPECT_TRUE(store_->DeleteWebhook(b.id()).ok());
  EXPECT_TRUE(absl::IsNotFound(store_->DeleteWebhook(b.id())));
  EXPECT_TRUE(absl::IsNotFound(store_->GetWebhook(b.id()).status()));

  v1::Webhook more = a;
  more.set_id("wh-more");
  EXPECT_TRUE(absl::IsResourceExhausted(store_->InsertWebhook(more, 1)));
}

TEST_F(WebhookStoreTest, StateChangesQueueDeliveriesInTheirTransaction) {
  int wakes = 0;
  store_->SetDeliveryListener([&] { ++wakes; });
  v1::Webhook terminal = Hook("p", {"fine_tuning.job.succeeded"});
  v1::Webhook running =
      Hook("p", {"fine_tuning.job.running", "fine_tuning.job.metrics"});
  v1::Webhook other = Hook("q", {"fine_tuning.job.running"});
  std::string job = Job("p");
  EXPECT_TRUE(Deliveries(running).empty());  // queued: not a webhook event
  Run(job);
  ASSERT_EQ(Deliveries(running).size(), 1u);
  EXPECT_TRUE(Deliveries(terminal).empty());
  EXPECT_TRUE(Deliveries(other).empty());  // another project's job
  EXPECT_EQ(wakes, 1);

  v1::JobEvent metrics;
  metrics.set_type("metrics");
  metrics.mutable_metrics()->set_step(1);
  ASSERT_TRUE(store_->AppendEvent(job, metrics, 1, 1).ok());
  // The same event sent again (a repeated report) is one event and one
  // delivery.
  ASSERT_TRUE(!store_->AppendEvent(job, metrics, 1, 1).ok());
  std::vector<v1::WebhookDelivery> got = Deliveries(running);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].event_type(), "fine_tuning.job.metrics");
  EXPECT_EQ(got[1].event_type(), "fine_tuning.job.running");

  // A status change refused by its compare-and-set queues nothing.
  EXPECT_FALSE(store_
                   ->Transition(job, v1::JOB_STATUS_QUEUED,
                                v1::JOB_STATUS_RUNNING, std::nullopt, {})
                   .ok());
  EXPECT_EQ(Deliveries(running).size(), 2u);

  ASSERT_TRUE(store_
                  ->Transition(job, v1::JOB_STATUS_RUNNING,
                               v1::JOB_STATUS_SUCCEEDED, 1, {})
                  .ok());
  got = Deliveries(terminal);
  ASSERT_EQ(got.size(), 1u);
  const v1::WebhookDelivery& d = got[0];
  EXPECT_TRUE(absl::StartsWith(d.id(), "msg_")) << d.id();
  EXPECT_EQ(d.job_id(), job);
  EXPECT_EQ(d.status(), v1::WEBHOOK_DELIVERY_STATUS_PENDING);
  EXPECT_EQ(d.attempts(), 0);
  EXPECT_GT(d.next_attempt_at(), 0);

  auto send = store_->LoadWebhookSend(d.id());
  ASSERT_TRUE(send.ok()) << send.status();
  EXPECT_EQ(send->url, terminal.url());
  EXPECT_EQ(send->secret, terminal.secret());
  EXPECT_EQ(send->event.status(), v1::JOB_STATUS_SUCCEEDED);
  EXPECT_EQ(send->event.id(), d.event_id());
  EXPECT_EQ(send->job.status(), v1::JOB_STATUS_SUCCEEDED);
}

TEST_F(WebhookStoreTest, AttemptsAreRecordedAndDueOnTime) {
  v1::Webhook w = Hook("p", {"fine_tuning.job.running"});
  Run(Job("p"));
  Run(Job("p"));
  std::vector<v1::WebhookDelivery> ds = Deliveries(w);
  ASSERT_EQ(ds.size(), 2u);
  int64_t now = NowUnixMillis();
  auto due = store_->DueWebhookDeliveries(now, 10);
  ASSERT_TRUE(due.ok());
  ASSERT_EQ(due->ids.size(), 2u);
  EXPECT_EQ(due->ids[0], ds[1].id());  // earliest first
  EXPECT_EQ(due->next_attempt_ms, std::nullopt);

  store::Store::WebhookAttempt retry;
  retry.response_code = 500;
  retry.error = "HTTP 500";
  retry.next_attempt_ms = now + 60'000;
  ASSERT_TRUE(store_->RecordWebhookAttempt(ds[1].id(), retry).ok());
  store::Store::WebhookAttempt ok;
  ok.response_code = 204;
  ok.delivered = true;
  ASSERT_TRUE(store_->RecordWebhookAttempt(ds[0].id(), ok).ok());
  due = store_->DueWebhookDeliveries(now, 10);
  ASSERT_TRUE(due.ok());
  EXPECT_TRUE(due->ids.empty());
  EXPECT_EQ(due->next_attempt_ms, now + 60'000);
  due = store_->DueWebhookDeliveries(now + 60'000, 10);
  ASSERT_EQ(due->ids.size(), 1u);

  ds = Deliveries(w);
  EXPECT_EQ(ds[0].status(), v1::WEBHOOK_DELIVERY_STATUS_DELIVERED);
  EXPECT_EQ(ds[0].attempts(), 1);
  EXPECT_EQ(ds[0].last_response_code(), 204);
  EXPECT_GT(ds[0].delivered_at(), 0);
  EXPECT_EQ(ds[0].next_attempt_at(), 0);
  EXPECT_EQ(ds[1].status(), v1::WEBHOOK_DELIVERY_STATUS_PENDING);
  EXPECT_EQ(ds[1].attempts(), 1);
  EXPECT_EQ(ds[1].last_error(), "HTTP 500");
  EXPECT_EQ(ds[1].next_attempt_at(), (now + 60'000 + 999) / 1000);

  store::Store::WebhookAttempt last;  // no retry time: failed
  last.error = "no answer: Connection";
  ASSERT_TRUE(store_->RecordWebhookAttempt(ds[1].id(), last).ok());
  ds = Deliveries(w);
  EXPECT_EQ(ds[1].status(), v1::WEBHOOK_DELIVERY_STATUS_FAILED);
  EXPECT_EQ(ds[1].attempts(), 2);
  EXPECT_EQ(ds[1].last_response_code(), 0);

  // Paging by delivery id; another webhook's id is an unknown cursor.
  auto page = store_->ListWebhookDeliveries(w.id(), 1, "");
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->has_more);
  page = store_->ListWebhookDeliveries(w.id(), 1, page->data[0].id());
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->data[0].id(), ds[1].id());
  v1::Webhook other = Hook("p", {});
  EXPECT_TRUE(absl::IsInvalidArgument(
      store_->ListWebhookDeliveries(other.id(), 1, ds[0].id()).status()));

  // Deleting the webhook deletes its deliveries.
  ASSERT_TRUE(store_->DeleteWebhook(w.id()).ok());
  EXPECT_TRUE(absl::IsNotFound(store_->LoadWebhookSend(ds[0].id()).status()));
  EXPECT_TRUE(store_->RecordWebhookAttempt(ds[0].id(), ok).ok());
}

// --- The operations -------------------------------------------------------

class WebhookOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "lathe-wh-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    store_ = *store::Store::Open(dir_ + "/lathe.db");
    blobs_ = *store::BlobStore::Open(dir_);
    coordinator_ = *Coordinator::Create(*store_, {});
    auth_ = std::make_unique<Authenticator>(*store_, "wt");
    feed_ = std::make_unique<EventFeed>(*store_, *auth_, EventFeedOptions{});
    ops_ = std::make_unique<Operations>(OperationDeps{
        store_.get(), blobs_.get(), coordinator_.get(), feed_.get(), {}});
    alice_ =
        *auth_->UserWithKey(CreateApiKey(*store_, "p", "user", "a")->secret());
    bob_ =
        *auth_->UserWithKey(CreateApiKey(*store_, "q", "user", "b")->secret());
  }
  void TearDown() override {
    ops_.reset();
    feed_.reset();
    auth_.reset();
    coordinator_.reset();
    blobs_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  absl::StatusOr<v1::Webhook> Create(const Caller& c, const std::string& url,
                                     std::vector<std::string> types = {}) {
    v1::CreateWebhookRequest r;
    r.set_url(url);
    for (auto& t : types) r.add_event_types(t);
    return ops_->webhooks.CreateWebhook(c, r);
  }

  std::string dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<store::BlobStore> blobs_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<EventFeed> feed_;
  std::unique_ptr<Operations> ops_;
  Caller alice_, bob_;
};

TEST_F(WebhookOpsTest, CreateChecksAndShowsTheSecretOnce) {
  auto w = Create(alice_, "https://hooks.example.com/lathe");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(absl::StartsWith(w->id(), "wh-"));
  EXPECT_TRUE(absl::StartsWith(w->secret(), "whsec_"));
  EXPECT_EQ(w->project(), "p");
  ASSERT_EQ(w->event_types_size(), 3);  // the terminal ones by default
  EXPECT_EQ(w->event_types(0), "fine_tuning.job.succeeded");
  EXPECT_EQ(w->event_types(1), "fine_tuning.job.failed");
  EXPECT_EQ(w->event_types(2), "fine_tuning.job.cancelled");
  auto listed = ops_->webhooks.ListWebhooks(alice_, {});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->data_size(), 1);
  EXPECT_TRUE(listed->data(0).secret().empty());

  auto bad = Create(alice_, "mailto:ops@example.com");
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_TRUE(absl::StartsWith(bad.status().message(), "url: "))
      << bad.status();
  bad = Create(alice_, "https://a.example.com/",
               {"fine_tuning.job.failed", "fine_tuning.job.exploded"});
  EXPECT_TRUE(absl::StartsWith(bad.status().message(), "event_types[1]: "))
      << bad.status();
  bad = Create(alice_, "https://a.example.com/",
               {"fine_tuning.job.failed", "fine_tuning.job.failed"});
  EXPECT_TRUE(absl::StartsWith(bad.status().message(), "event_types[1]: "))
      << bad.status();
  v1::CreateWebhookRequest r;
  r.set_url("https://a.example.com/");
  r.set_description("a\x1b[2J");
  bad = ops_->webhooks.CreateWebhook(alice_, r);
  EXPECT_TRUE(absl::StartsWith(bad.status().message(), "description: "))
      << bad.status();
  for (int i = 1; i < kMaxWebhooksPerProject; ++i) {
    ASSERT_TRUE(Create(alice_, "https://a.example.com/").ok());
  }
  EXPECT_TRUE(absl::IsResourceExhausted(
      Create(alice_, "https://a.example.com/").status()));
}

TEST_F(WebhookOpsTest, AnotherProjectsWebhookReadsAsMissing) {
  auto w = Create(alice_, "https://hooks.example.com/lathe");
  ASSERT_TRUE(w.ok());
  v1::DeleteWebhookRequest del;
  del.set_webhook_id(w->id());
  auto theirs = ops_->webhooks.DeleteWebhook(bob_, del);
  v1::DeleteWebhookRequest missing;
  missing.set_webhook_id("wh-nope");
  auto none = ops_->webhooks.DeleteWebhook(bob_, missing);
  ASSERT_TRUE(absl::IsNotFound(theirs.status()));
  EXPECT_EQ(theirs.status().message(),
            absl::StrCat("no such webhook: ", w->id()));
  EXPECT_EQ(none.status().message(), "no such webhook: wh-nope");
  v1::ListWebhookDeliveriesRequest ld;
  ld.set_webhook_id(w->id());
  EXPECT_TRUE(absl::IsNotFound(
      ops_->webhooks.ListWebhookDeliveries(bob_, ld).status()));
  EXPECT_EQ(ops_->webhooks.ListWebhooks(bob_, {})->data_size(), 0);
  EXPECT_TRUE(ops_->webhooks.ListWebhookDeliveries(alice_, ld).ok());
  auto deleted = ops_->webhooks.DeleteWebhook(alice_, del);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_TRUE(deleted->deleted());
  EXPECT_TRUE(
      absl::IsNotFound(ops_->webhooks.DeleteWebhook(alice_, del).status()));
}

// --- The dispatcher against a receiver in this process --------------------

// Until `server` accepts connections (after listen_after_bind started).
void WaitUntilRunning(httplib::Server& server) {
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server.is_running() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// An HTTP receiver on 127.0.0.1 that answers each request with the next
// status of `statuses` (the last one repeating) and keeps what it got.
class Receiver {
 public:
  explicit Receiver(std::vector<int> statuses)
      : statuses_(std::move(statuses)) {
    server_.Post(
        "/hook", [this](const httplib::Request& req, httplib::Response& res) {
          absl::MutexLock lock(&mu_);
          got_.push_back(req);
          int i = std::min<size_t>(got_.size() - 1, statuses_.size() - 1);
          res.status = statuses_[i];
          res.set_content(res.status >= 300 ? "receiver says no" : "ok",
                          "text/plain");
        });
    port_ = server_.bind_to_any_port("127.0.0.1");
    EXPECT_GT(port_, 0);
    if (port_ <= 0) return;
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    WaitUntilRunning(server_);
  }
  ~Receiver() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  std::string url() const {
    return absl::StrCat("http://127.0.0.1:", port_, "/hook");
  }
  std::vector<httplib::Request> got() {
    absl::MutexLock lock(&mu_);
    return got_;
  }

 private:
  httplib::Server server_;
  std::vector<int> statuses_;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<httplib::Request> got_;
};

class DispatcherTest : public WebhookStoreTest {
 protected:
  v1::WebhookDelivery WaitFor(const v1::Webhook& w,
                              v1::WebhookDeliveryStatus status) {
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      std::vector<v1::WebhookDelivery> ds = Deliveries(w);
      if (!ds.empty() && ds[0].status() == status) return ds[0];
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "delivery never "
                  << v1::WebhookDeliveryStatus_Name(status);
    return {};
  }
};

TEST_F(DispatcherTest, SendsSignedAndRetriesUntilA2xx) {
  Receiver receiver({500, 503, 204});
  v1::Webhook w = Hook("p", {"fine_tuning.job.running"}, receiver.url());
  WebhookDispatcherOptions o;
  o.retry.base = absl::Milliseconds(50);  // then 3 s: the schedule's 60x
  o.retry.max_attempts = 3;
  o.poll_interval = absl::Seconds(30);  // woken by the store, not polling
  auto dispatcher = WebhookDispatcher::Start(*store_, o);
  ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
  std::string job = Job("p");
  Run(job);
  v1::WebhookDelivery d = WaitFor(w, v1::WEBHOOK_DELIVERY_STATUS_DELIVERED);
  EXPECT_EQ(d.attempts(), 3);
  EXPECT_EQ(d.last_response_code(), 204);
  std::vector<httplib::Request> got = receiver.got();
  ASSERT_EQ(got.size(), 3u);
  for (const httplib::Request& req : got) {
    EXPECT_EQ(req.get_header_value("webhook-id"), d.id());
    EXPECT_EQ(req.get_header_value("content-type"), "application/json");
    EXPECT_EQ(req.get_header_value("user-agent"), "Lathe-Webhooks/1");
    int64_t ts = std::stoll(req.get_header_value("webhook-timestamp"));
    EXPECT_LE(std::abs(ts - NowUnixSeconds()), 60);
    EXPECT_EQ(req.get_header_value("webhook-signature"),
              *SignWebhook(w.secret(), d.id(), ts, req.body));
    EXPECT_EQ(req.body, got[0].body);  // the same body on every attempt
  }
  auto body = nlohmann::json::parse(got[0].body);
  EXPECT_EQ(body["data"]["id"], job);
  EXPECT_EQ(body["type"], "fine_tuning.job.running");
  (*dispatcher)->Stop();
}

TEST_F(DispatcherTest, FailsAfterTheLastAttemptAndRecordsWhy) {
  Receiver receiver({500});
  v1::Webhook w = Hook("p", {"fine_tuning.job.running"}, receiver.url());
  v1::Webhook dead = Hook("p", {"fine_tuning.job.running"});
  WebhookDispatcherOptions o;
  o.retry.base = absl::Milliseconds(50);
  o.retry.max_attempts = 2;
  auto dispatcher = WebhookDispatcher::Start(*store_, o);
  ASSERT_TRUE(dispatcher.ok());
  Run(Job("p"));
  v1::WebhookDelivery d = WaitFor(w, v1::WEBHOOK_DELIVERY_STATUS_FAILED);
  EXPECT_EQ(d.attempts(), 2);
  EXPECT_EQ(d.last_response_code(), 500);
  EXPECT_EQ(d.last_error(), "HTTP 500: receiver says no");
  d = WaitFor(dead, v1::WEBHOOK_DELIVERY_STATUS_FAILED);
  EXPECT_EQ(d.last_response_code(), 0);
  EXPECT_TRUE(absl::StartsWith(d.last_error(), "no answer: "))
      << d.last_error();
  EXPECT_EQ(receiver.got().size(), 2u);
}

TEST_F(DispatcherTest, StopEndsASendInFlightAndLeavesItPending) {
  // A receiver that accepts the connection and never answers.
  httplib::Server silent;
  std::atomic<bool> release{false};
  silent.Post("/hook", [&](const httplib::Request&, httplib::Response& res) {
    while (!release.load()) absl::SleepFor(absl::Milliseconds(10));
    res.status = 200;
  });
  int port = silent.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { silent.listen_after_bind(); });
  WaitUntilRunning(silent);
  v1::Webhook w = Hook("p", {"fine_tuning.job.running"},
                       absl::StrCat("http://127.0.0.1:", port, "/hook"));
  WebhookDispatcherOptions o;
  o.read_timeout = absl::Seconds(60);
  auto dispatcher = WebhookDispatcher::Start(*store_, o);
  ASSERT_TRUE(dispatcher.ok());
  Run(Job("p"));
  absl::SleepFor(absl::Milliseconds(500));  // the POST is in flight
  absl::Time start = absl::Now();
  (*dispatcher)->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  std::vector<v1::WebhookDelivery> ds = Deliveries(w);
  ASSERT_EQ(ds.size(), 1u);
  EXPECT_EQ(ds[0].status(), v1::WEBHOOK_DELIVERY_STATUS_PENDING);
  EXPECT_EQ(ds[0].attempts(), 0);
  release = true;
  silent.stop();
  serving.join();
}

TEST(WebhookDispatcherStartTest, RefusesAnUnreadableCaFile) {
  auto store = *store::Store::Open(":memory:");
  WebhookDispatcherOptions o;
  o.ca_file = "/nonexistent/ca.pem";
  auto d = WebhookDispatcher::Start(*store, o);
  EXPECT_TRUE(absl::IsInvalidArgument(d.status()));
  EXPECT_TRUE(absl::StartsWith(d.status().message(), "--webhook_ca_cert: "));
}

}  // namespace
}  // namespace lathe
