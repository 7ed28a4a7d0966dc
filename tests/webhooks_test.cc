// Webhooks with real processes: a lathed and a worker on loopback, and
// receivers in this test process (cpp-httplib servers, one over https with
// the cluster's private CA) that check every delivery's signature on their
// own (HMAC-SHA256 computed here with OpenSSL, the timestamp within the
// Standard Webhooks tolerance). A job that succeeds and a job that is
// cancelled each bring one verified delivery per state change; a receiver
// that answers 500 first gets the retry; a receiver that is down while
// lathed is killed gets its delivery from the restarted lathed.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/ids.h"
#include "common/job_state.h"
#include "tests/cluster.h"
#include "tests/job_history.h"

namespace lathe::testing {
namespace {

constexpr int64_t kToleranceSeconds = 5 * 60;  // Standard Webhooks' default

// What a receiver made of one request.
struct Received {
  std::string id;    // webhook-id
  std::string type;  // the payload's type
  std::string job_id;
  bool verified = false;  // signature and timestamp both good
  std::string why;        // when not verified
};

// The expected webhook-signature, computed independently of lathed's code:
// v1,<base64(HMAC-SHA256(base64decode(secret after "whsec_"),
// "<id>.<timestamp>.<body>"))>.
std::string ExpectedSignature(const std::string& secret, const std::string& id,
                              const std::string& timestamp,
                              const std::string& body) {
  std::string key;
  if (!absl::StartsWith(secret, "whsec_") ||
      !absl::Base64Unescape(secret.substr(6), &key)) {
    return "bad secret";
  }
  std::string content = id + "." + timestamp + "." + body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(),
       mac, &len);
  return "v1," + absl::Base64Escape(
                     absl::string_view(reinterpret_cast<char*>(mac), len));
}

// Until `server` accepts connections (after listen_after_bind started).
void WaitUntilRunning(httplib::Server& server) {
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server.is_running() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// A webhook receiver at /hook on 127.0.0.1: answers with the next of
// `statuses` (the last one repeating), checks and keeps every request.
class Receiver {
 public:
  // Plain HTTP on a new port, or on `port`.
  explicit Receiver(std::vector<int> statuses, int port = 0)
      : server_(std::make_unique<httplib::Server>()),
        statuses_(std::move(statuses)) {
    Listen(port);
  }
  // HTTPS with `cert`/`key`.
  Receiver(std::vector<int> statuses, const std::string& cert,
           const std::string& key)
      : server_(
            std::make_unique<httplib::SSLServer>(cert.c_str(), key.c_str())),
        statuses_(std::move(statuses)),
        https_(true) {
    Listen(0);
  }
  ~Receiver() {
    server_->stop();
    if (thread_.joinable()) thread_.join();
  }

  void set_secret(const std::string& secret) {
    absl::MutexLock lock(&mu_);
    secret_ = secret;
  }
  int port() const { return port_; }
  std::string url() const {
    return absl::StrCat(https_ ? "https" : "http", "://127.0.0.1:", port_,
                        "/hook");
  }
  std::vector<Received> got() {
    absl::MutexLock lock(&mu_);
    return got_;
  }
  // Waits until `done(got())` or 60 s.
  bool WaitFor(const std::function<bool(const std::vector<Received>&)>& done) {
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (absl::Now() < deadline) {
      if (done(got())) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

 private:
  void Listen(int port) {
    server_->Post("/hook", [this](const httplib::Request& req,
                                  httplib::Response& res) {
      Received r;
      r.id = req.get_header_value("webhook-id");
      std::string ts = req.get_header_value("webhook-timestamp");
      int64_t t = 0;
      absl::MutexLock lock(&mu_);
      std::string want = ExpectedSignature(secret_, r.id, ts, req.body);
      auto body =
          nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
      if (!absl::SimpleAtoi(ts, &t) ||
          std::abs(t - NowUnixSeconds()) > kToleranceSeconds) {
        r.why = "timestamp " + ts;
      } else if (req.get_header_value("webhook-signature") != want) {
        r.why = "signature " + req.get_header_value("webhook-signature");
      } else if (body.is_discarded() || body["id"] != r.id ||
                 body["object"] != "event") {
        r.why = "body " + req.body;
      } else if (req.get_header_value("content-type") != "application/json") {
        r.why = "content-type " + req.get_header_value("content-type");
      } else {
        r.verified = true;
        r.type = body["type"].get<std::string>();
        r.job_id = body["data"]["id"].get<std::string>();
      }
      got_.push_back(r);
      res.status = statuses_[std::min(got_.size(), statuses_.size()) - 1];
      res.set_content("{}", "application/json");
    });
    port_ = port == 0 ? server_->bind_to_any_port("127.0.0.1")
                      : (server_->bind_to_port("127.0.0.1", port) ? port : -1);
    if (port_ <= 0) return;  // the test fails on port()
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    WaitUntilRunning(*server_);
  }

  std::unique_ptr<httplib::Server> server_;
  const std::vector<int> statuses_;
  const bool https_ = false;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::string secret_ ABSL_GUARDED_BY(mu_);
  std::vector<Received> got_ ABSL_GUARDED_BY(mu_);
};

// A port nothing listens on now (bound, never listened on, and closed).
int UnusedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

absl::StatusOr<v1::Webhook> Register(Client& c, const std::string& url,
                                     const std::vector<std::string>& types) {
  v1::CreateWebhookRequest r;
  r.set_url(url);
  for (const std::string& t : types) r.add_event_types(t);
  return c.CreateWebhook(r);
}

// How many of `job_id`'s events are status changes to `status`.
int StatusChanges(Client& c, const std::string& job_id, v1::JobStatus status) {
  int n = 0;
  for (const v1::JobEvent& e : AllEvents(c, job_id)) n += e.status() == status;
  return n;
}

// The verified deliveries of `job_id` by type, and whether any was not
// verified.
std::map<std::string, int> ByType(const std::vector<Received>& got,
                                  const std::string& job_id,
                                  bool* all_verified) {
  std::map<std::string, int> out;
  for (const Received& r : got) {
    if (!r.verified) *all_verified = false;
    if (r.verified && r.job_id == job_id) ++out[r.type];
  }
  return out;
}

std::vector<v1::WebhookDelivery> Deliveries(Client& c,
                                            const std::string& webhook_id) {
  v1::ListWebhookDeliveriesRequest r;
  r.set_webhook_id(webhook_id);
  r.set_limit(100);
  auto page = c.ListWebhookDeliveries(r);
  EXPECT_TRUE(page.ok()) << page.status();
  if (!page.ok()) return {};
  return {page->data().begin(), page->data().end()};
}

TEST(WebhooksTest, SignedDeliveriesPerStateChangeRetriedAndDurable) {
  const std::string root = TestRoot("webhooks");
  auto cluster =
      Cluster::Start(root, 1,
                     {"--webhook_retry_base_seconds=0.2",
                      "--webhook_ca_cert=" + root + "/certs/ca.pem"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto client = c.ClientFor("hooks");

  // Every state change of interest, over http; the succeeded ones over
  // https (the cluster's private CA, given to lathed); one receiver that
  // fails first; one that is down until lathed has been killed.
  Receiver all({200});
  Receiver https({204}, c.certs_dir() + "/server.pem",
                 c.certs_dir() + "/server.key");
  Receiver flaky({500, 200});
  const int down_port = UnusedPort();
  auto w_all =
      Register(*client, all.url(),
               {"fine_tuning.job.running", "fine_tuning.job.succeeded",
                "fine_tuning.job.failed", "fine_tuning.job.cancelled"});
  auto w_https = Register(*client, https.url(), {"fine_tuning.job.succeeded"});
  auto w_flaky = Register(*client, flaky.url(), {});  // the terminal ones
  auto w_down =
      Register(*client, absl::StrCat("http://127.0.0.1:", down_port, "/hook"),
               {"fine_tuning.job.succeeded"});
  ASSERT_TRUE(w_all.ok() && w_https.ok() && w_flaky.ok() && w_down.ok())
      << w_all.status() << w_https.status() << w_flaky.status()
      << w_down.status();
  EXPECT_EQ(w_flaky->event_types_size(), 3);
  all.set_secret(w_all->secret());
  https.set_secret(w_https->secret());
  flaky.set_secret(w_flaky->secret());

  auto file =
      client->UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  auto job = client->CreateJob(DemoJob(file->id(), 1));
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(
      WaitForJob(*client, job->id(),
                 [](const v1::Job& j) { return IsTerminal(j.status()); })
          .ok())
      << c.Logs();
  ASSERT_EQ(client->GetJob(job->id())->status(), v1::JOB_STATUS_SUCCEEDED)
      << c.Logs();

  // One verified delivery per state change: as many as the job's events
  // record (one running unless a worker was lost, one succeeded).
  int running = StatusChanges(*client, job->id(), v1::JOB_STATUS_RUNNING);
  EXPECT_GE(running, 1);
  bool verified = true;
  ASSERT_TRUE(all.WaitFor([&](const std::vector<Received>& got) {
    bool ignored = true;
    auto n = ByType(got, job->id(), &ignored);
    return n["fine_tuning.job.running"] == running &&
           n["fine_tuning.job.succeeded"] == 1;
  })) << c.Logs();
  auto n = ByType(all.got(), job->id(), &verified);
  EXPECT_TRUE(verified);
  EXPECT_EQ(n.size(), 2u);  // nothing else (no metrics: not subscribed)
  EXPECT_EQ(all.got().size(), static_cast<size_t>(running + 1));  // no repeats

  ASSERT_TRUE(https.WaitFor([&](const std::vector<Received>& got) {
    return got.size() == 1 && got[0].verified;
  })) << c.Logs();
  EXPECT_EQ(https.got()[0].type, "fine_tuning.job.succeeded");

  // The receiver that failed first got the retry, with the same id, and
  // the delivery is recorded as delivered on attempt 2.
  ASSERT_TRUE(flaky.WaitFor([](const std::vector<Received>& got) {
    return got.size() == 2;
  })) << c.Logs();
  EXPECT_TRUE(flaky.got()[0].verified && flaky.got()[1].verified)
      << flaky.got()[0].why;
  EXPECT_EQ(flaky.got()[0].id, flaky.got()[1].id);
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  std::vector<v1::WebhookDelivery> ds;
  while (absl::Now() < deadline) {
    ds = Deliveries(*client, w_flaky->id());
    if (ds.size() == 1 &&
        ds[0].status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED)
      break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(ds.size(), 1u);
  EXPECT_EQ(ds[0].id(), flaky.got()[0].id);
  EXPECT_EQ(ds[0].status(), v1::WEBHOOK_DELIVERY_STATUS_DELIVERED);
  EXPECT_EQ(ds[0].attempts(), 2);
  EXPECT_EQ(ds[0].last_response_code(), 200);
  EXPECT_EQ(ds[0].event_type(), "fine_tuning.job.succeeded");
  EXPECT_EQ(ds[0].job_id(), job->id());
  EXPECT_GT(ds[0].delivered_at(), 0);

  // The receiver that is down: the delivery stays pending (its second
  // attempt is due 0.2 s after the first, the third 12 s after that)...
  deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    ds = Deliveries(*client, w_down->id());
    if (ds.size() == 1 && ds[0].attempts() >= 2) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(ds.size(), 1u);
  ASSERT_GE(ds[0].attempts(), 2);
  EXPECT_EQ(ds[0].status(), v1::WEBHOOK_DELIVERY_STATUS_PENDING);
  EXPECT_EQ(ds[0].last_response_code(), 0);
  EXPECT_TRUE(absl::StartsWith(ds[0].last_error(), "no answer: "))
      << ds[0].last_error();
  const std::string down_delivery = ds[0].id();
  // ... through a kill -9 of lathed, at once (well before the third
  // attempt is due): the restarted lathed sends it when it is.
  Receiver back({200}, down_port);
  ASSERT_EQ(back.port(), down_port);
  back.set_secret(w_down->secret());
  ASSERT_TRUE(c.RestartLathed().ok()) << c.Logs();
  client = c.ClientFor("hooks");
  ASSERT_TRUE(back.WaitFor([](const std::vector<Received>& got) {
    return !got.empty();
  })) << c.Logs();
  EXPECT_TRUE(back.got()[0].verified) << back.got()[0].why;
  EXPECT_EQ(back.got()[0].id, down_delivery);
  EXPECT_EQ(back.got()[0].type, "fine_tuning.job.succeeded");
  EXPECT_EQ(back.got().size(), 1u);

  // A cancelled job: its running (if it got that far) and its cancelled.
  auto slow = client->CreateJob(DemoJob(file->id(), 50));
  ASSERT_TRUE(slow.ok()) << slow.status();
  ASSERT_TRUE(WaitForJob(*client, slow->id(),
                         [](const v1::Job& j) {
                           return j.status() == v1::JOB_STATUS_RUNNING;
                         })
                  .ok())
      << c.Logs();
  ASSERT_TRUE(client->CancelJob(slow->id()).ok());
  ASSERT_TRUE(
      WaitForJob(*client, slow->id(),
                 [](const v1::Job& j) { return IsTerminal(j.status()); })
          .ok())
      << c.Logs();
  ASSERT_EQ(client->GetJob(slow->id())->status(), v1::JOB_STATUS_CANCELLED);
  running = StatusChanges(*client, slow->id(), v1::JOB_STATUS_RUNNING);
  ASSERT_TRUE(all.WaitFor([&](const std::vector<Received>& got) {
    bool ignored = true;
    auto m = ByType(got, slow->id(), &ignored);
    return m["fine_tuning.job.running"] == running &&
           m["fine_tuning.job.cancelled"] == 1;
  })) << c.Logs();
  n = ByType(all.got(), slow->id(), &verified);
  EXPECT_TRUE(verified);
  EXPECT_EQ(n.size(), 2u);
  EXPECT_EQ(StatusChanges(*client, slow->id(), v1::JOB_STATUS_CANCELLED), 1);
  ASSERT_TRUE(flaky.WaitFor(
      [&](const std::vector<Received>& got) { return got.size() == 3; }));
  EXPECT_EQ(flaky.got()[2].type, "fine_tuning.job.cancelled");
  EXPECT_EQ(https.got().size(), 1u);  // subscribed to succeeded only
}

TEST(WebhooksTest, BadInputAndProjectIsolation) {
  auto cluster = Cluster::Start(TestRoot("webhooks-api"), 0);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto mine = c.ClientFor("hooks");
  auto theirs = c.ClientFor("others");

  for (const char* url : {"ftp://example.com/hook",
                          "https://user:pw@example.com/", "not a url", ""}) {
    auto bad = Register(*mine, url, {});
    EXPECT_TRUE(absl::IsInvalidArgument(bad.status()))
        << url << ": " << bad.status();
    EXPECT_TRUE(absl::StartsWith(bad.status().message(), "url: "))
        << bad.status();
  }
  auto bad = Register(*mine, "https://example.com/hook",
                      {"fine_tuning.job.succeeded", "fine_tuning.job.done"});
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_TRUE(absl::StartsWith(bad.status().message(), "event_types[1]: "))
      << bad.status();

  auto w =
      Register(*mine, "https://example.com/hook", {"fine_tuning.job.metrics"});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(absl::StartsWith(w->id(), "wh-"));
  EXPECT_TRUE(absl::StartsWith(w->secret(), "whsec_"));
  auto listed = mine->ListWebhooks({});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->data_size(), 1);
  EXPECT_EQ(listed->data(0).id(), w->id());
  EXPECT_TRUE(listed->data(0).secret().empty());  // shown once only

  // Another project neither sees nor deletes it, and its id answers as a
  // missing one does, to the letter.
  EXPECT_EQ(theirs->ListWebhooks({})->data_size(), 0);
  absl::Status st = theirs->DeleteWebhook(w->id());
  absl::Status missing = theirs->DeleteWebhook("wh-missing");
  EXPECT_TRUE(absl::IsNotFound(st)) << st;
  EXPECT_EQ(st.message(), absl::StrCat("no such webhook: ", w->id()));
  EXPECT_EQ(missing.message(), "no such webhook: wh-missing");
  v1::ListWebhookDeliveriesRequest ld;
  ld.set_webhook_id(w->id());
  EXPECT_TRUE(absl::IsNotFound(theirs->ListWebhookDeliveries(ld).status()));
  v1::ListWebhooksRequest cursor;
  cursor.set_after(w->id());
  EXPECT_TRUE(absl::IsInvalidArgument(theirs->ListWebhooks(cursor).status()));
  EXPECT_EQ(mine->ListWebhooks({})->data_size(), 1);

  // The CLI: list, deliveries and delete through the same API.
  std::vector<std::string> cli = {Binaries().cli, "--server", c.address(),
                                  "--api_key", c.NewKey("hooks")};
  auto tls = c.CliTlsFlags();
  cli.insert(cli.end(), tls.begin(), tls.end());
  auto run = [&](std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = cli;
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out);
  };
  std::string out;
  ASSERT_EQ(run({"webhooks", "create", "--url", "http://127.0.0.1:9/h",
                 "--event-type", "fine_tuning.job.failed"},
                &out),
            0)
      << out;
  EXPECT_TRUE(absl::StrContains(out, "secret (shown once")) << out;
  EXPECT_TRUE(absl::StrContains(out, "whsec_")) << out;
  ASSERT_EQ(run({"webhooks", "list"}, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, w->id())) << out;
  EXPECT_TRUE(absl::StrContains(out, "fine_tuning.job.failed")) << out;
  EXPECT_FALSE(absl::StrContains(out, "whsec_")) << out;
  ASSERT_EQ(run({"webhooks", "deliveries", w->id()}, &out), 0) << out;
  EXPECT_EQ(run({"webhooks", "create", "--url", "ftp://x"}, &out), 1);
  EXPECT_TRUE(absl::StrContains(out, "INVALID_ARGUMENT: url: ")) << out;
  ASSERT_EQ(run({"webhooks", "delete", w->id()}, &out), 0) << out;
  EXPECT_TRUE(absl::IsNotFound(mine->DeleteWebhook(w->id())));
}

}  // namespace
}  // namespace lathe::testing
