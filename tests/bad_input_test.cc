// A table of bad inputs through the real server: each gets the right status
// code and a message naming the field or the line, and nothing is stored.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "server/store/store.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

struct Case {
  std::string name;
  std::function<absl::Status()> call;
  absl::StatusCode code;
  std::string names;  // a substring of the message: the field or the line
};

constexpr char kGood[] =
    R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})";

// An upload held open: the header sent, the stream neither finished nor
// cancelled until it is destroyed.
class OpenUpload {
 public:
  OpenUpload(Cluster& cluster, const std::string& key)
      : stub_(v1::Files::NewStub(cluster.NewChannel())) {
    ctx_.AddMetadata("authorization", "Bearer " + key);
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    writer_ = stub_->Upload(&ctx_, &out_);
    v1::UploadFileRequest r;
    r.mutable_header()->set_filename("held.jsonl");
    r.mutable_header()->set_purpose("fine-tune");
    r.mutable_header()->set_bytes(1000);
    writer_->Write(r);
  }
  ~OpenUpload() {
    ctx_.TryCancel();
    writer_->Finish();
  }

 private:
  std::unique_ptr<v1::Files::Stub> stub_;
  grpc::ClientContext ctx_;
  v1::File out_;
  std::unique_ptr<grpc::ClientWriter<v1::UploadFileRequest>> writer_;
};

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Small limits, to reach each with a small request.
    auto c = Cluster::Start(TestRoot("bad-input"), 0,
                            {"--max_upload_bytes=8000000", "--max_examples_per_file=50",
                             "--max_jobs_in_flight_per_project=1",
                             "--max_message_bytes=2097152"});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
  }

  // Uploads `content` as a file through the client library.
  absl::Status Upload(const std::string& content, const std::string& purpose = "fine-tune") {
    std::string path = cluster_->root() + "/upload.jsonl";
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    return cluster_->client().UploadFile(path, purpose, nullptr).status();
  }

  // Sends raw upload messages (to reach what the client library never sends).
  absl::Status RawUpload(const std::vector<v1::UploadFileRequest>& messages) {
    auto stub = v1::Files::NewStub(cluster_->NewChannel());
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + cluster_->api_key());
    v1::File out;
    auto writer = stub->Upload(&ctx, &out);
    for (const auto& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  }

  // Sends `header` and neither a body nor the end of the stream: the status
  // of an upload refused at its header (DEADLINE_EXCEEDED if the server
  // waits for the body instead).
  absl::Status HeaderOnly(const v1::UploadFileRequest& header) {
    auto stub = v1::Files::NewStub(cluster_->NewChannel());
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + cluster_->api_key());
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::File out;
    auto writer = stub->Upload(&ctx, &out);
    writer->Write(header);
    grpc::Status st = writer->Finish();
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  }

  // How an upload can end without the client finishing it.
  enum class CutShort { kCancel, kDeadline };
  // Sends `messages`, then cancels the call or lets its deadline pass
  // instead of half-closing; returns the call's status.
  absl::Status UploadCutShort(const std::vector<v1::UploadFileRequest>& messages,
                              CutShort how) {
    auto stub = v1::Files::NewStub(cluster_->NewChannel());
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + cluster_->api_key());
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::File out;
    auto writer = stub->Upload(&ctx, &out);
    for (const auto& m : messages) writer->Write(m);
    // Let the server read everything first: then only the end is missing.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (how == CutShort::kCancel) ctx.TryCancel();
    grpc::Status st = writer->Finish();
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  }

  // Asserts that no file, blob or temporary is stored, once the server has
  // dropped the upload (a cancelled client may hear of it first).
  void ExpectNothingStored() {
    const std::string tmp = cluster_->root() + "/data/tmp";
    for (int i = 0; i < 100 && !fs::is_empty(tmp); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_TRUE(fs::is_empty(tmp));
    EXPECT_EQ(cluster_->client().ListFiles({})->data_size(), 0);
    int blobs = 0;
    for (const auto& e : fs::recursive_directory_iterator(cluster_->root() + "/data/blobs")) {
      blobs += e.is_regular_file();
    }
    EXPECT_EQ(blobs, 0);
  }

  // Registers a model folder whose model.safetensors is `header` (a JSON
  // header, with `declared` as its length prefix if >= 0) and `data`.
  absl::Status RegisterBadWeights(const std::string& name, const std::string& header,
                                  const std::string& data, int64_t declared = -1) {
    std::string dir = cluster_->root() + "/bad-" + name;
    fs::create_directories(dir);
    fs::copy_file(cluster_->demo_dir() + "/model/config.json", dir + "/config.json",
                  fs::copy_options::overwrite_existing);
    uint64_t n = declared >= 0 ? static_cast<uint64_t>(declared) : header.size();
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    std::ofstream(dir + "/model.safetensors", std::ios::binary | std::ios::trunc)
        << bytes << header << data;
    return cluster_->admin().RegisterModel("bad-" + name, dir).status();
  }

  // A model folder whose weights and tokenizer are symbolic links, one of
  // them to a file outside the folder.
  absl::Status RegisterLinkedModel() {
    std::string dir = cluster_->root() + "/linked";
    fs::create_directories(dir);
    for (const char* name : {"config.json", "model.safetensors"}) {
      fs::path target = fs::absolute(cluster_->demo_dir() + "/model/" + name);
      std::error_code ec;
      fs::create_symlink(target, fs::path(dir) / name, ec);
    }
    std::ofstream(cluster_->root() + "/secret.txt") << "not a tokenizer\n";
    std::error_code ec;
    fs::create_symlink("../secret.txt", fs::path(dir) / "tokenizer.json", ec);
    return cluster_->admin().RegisterModel("linked", dir).status();
  }

  static v1::UploadFileRequest Header(const std::string& filename, int64_t bytes = 0,
                                      const std::string& sha = "") {
    v1::UploadFileRequest r;
    r.mutable_header()->set_filename(filename);
    r.mutable_header()->set_purpose("fine-tune");
    r.mutable_header()->set_bytes(bytes);
    r.mutable_header()->set_sha256(sha);
    return r;
  }
  static v1::UploadFileRequest Chunk(const std::string& data) {
    v1::UploadFileRequest r;
    r.set_chunk(data);
    return r;
  }

  std::unique_ptr<Cluster> cluster_;
};

TEST_F(BadInputTest, EveryBadInputIsRefusedByNameAndNothingIsStored) {
  Client& c = cluster_->client();
  ASSERT_TRUE(Upload(std::string(kGood) + "\n").ok());
  auto files = c.ListFiles({});
  ASSERT_EQ(files->data_size(), 1);
  const std::string file_id = files->data(0).id();
  v1::CreateJobRequest good;
  good.set_model("lathe-demo");
  good.set_training_file(file_id);
  good.set_idempotency_key("once");
  auto job = c.CreateJob(good);
  ASSERT_TRUE(job.ok()) << job.status();

  auto create = [&](std::function<void(v1::CreateJobRequest&)> change) {
    return [&c, file_id, change] {
      v1::CreateJobRequest r;
      r.set_model("lathe-demo");
      r.set_training_file(file_id);
      change(r);
      return c.CreateJob(r).status();
    };
  };
  auto hp = [](v1::CreateJobRequest& r) {
    return r.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  };
  using C = absl::StatusCode;
  const std::string line1 = std::string(kGood) + "\n";
  std::vector<Case> cases = {
      {"invalid JSON", [&] { return Upload(line1 + "{oops\n"); }, C::kInvalidArgument, "line 2: not valid JSON"},
      {"invalid UTF-8", [&] { return Upload(line1 + "{\"text\":\"\xc3\x28\"}\n"); }, C::kInvalidArgument, "line 2: not valid JSON (or not valid UTF-8)"},
      {"not an object", [&] { return Upload("[1,2]\n"); }, C::kInvalidArgument, "line 1: expected a JSON object"},
      {"messages not an array", [&] { return Upload(R"({"messages":"hi"})"); }, C::kInvalidArgument, "line 1: messages: expected a non-empty array"},
      {"unknown role", [&] { return Upload(line1 + R"({"messages":[{"role":"user","content":"q"},{"role":"robot","content":"a"}]})"); }, C::kInvalidArgument, "line 2: messages[1].role"},
      {"content not a string", [&] { return Upload(R"({"messages":[{"role":"user","content":5},{"role":"assistant","content":"a"}]})"); }, C::kInvalidArgument, "line 1: messages[0].content"},
      {"empty assistant", [&] { return Upload(R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":""}]})"); }, C::kInvalidArgument, "line 1: messages[1].content: empty assistant"},
      {"no assistant", [&] { return Upload(R"({"messages":[{"role":"user","content":"q"}]})"); }, C::kInvalidArgument, "line 1: messages: no assistant message"},
      {"bad weight", [&] { return Upload(R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":0.5}]})"); }, C::kInvalidArgument, "line 1: messages[1].weight"},
      {"mixed formats", [&] { return Upload(line1 + R"({"text":"plain"})"); }, C::kInvalidArgument, "line 2: mixed formats"},
      {"prompt without completion", [&] { return Upload(R"({"prompt":"a"})"); }, C::kInvalidArgument, "line 1: completion: missing"},
      {"empty text", [&] { return Upload(R"({"text":""})"); }, C::kInvalidArgument, "line 1: text"},
      {"unknown format", [&] { return Upload(R"({"prompt_text":"a","output":"b"})"); }, C::kInvalidArgument, "line 1: messages: missing"},
      {"preference input not an object", [&] { return Upload(R"({"input":"a","output":"b"})"); }, C::kInvalidArgument, "line 1: input: expected an object"},
      {"a single huge line", [&] { return Upload(line1 + "{\"text\":\"" + std::string(5 << 20, 'x') + "\"}\n"); }, C::kResourceExhausted, "line 2: longer than"},
      {"empty file", [&] { return Upload("\n\n"); }, C::kInvalidArgument, "no examples"},
      {"a line of only \\f", [&] { return Upload(line1 + "\f\n"); }, C::kInvalidArgument, "line 2: not valid JSON"},
      {"JSON then \\v", [&] { return Upload(line1 + R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})" "\v\n"); }, C::kInvalidArgument, "line 2: not valid JSON"},
      {"messages and text", [&] { return Upload(R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"text":"t"})"); }, C::kInvalidArgument, "line 1: ambiguous: holds \"messages\" and \"text\""},
      {"messages and prompt", [&] { return Upload(R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"prompt":"p"})"); }, C::kInvalidArgument, "line 1: ambiguous: holds \"messages\" and \"prompt\""},
      {"a key twice", [&] { return Upload(R"({"text":"a","text":"b"})"); }, C::kInvalidArgument, "line 1: text: given twice"},
      {"bad purpose", [&] { return Upload(line1, "batch"); }, C::kInvalidArgument, "purpose"},
      {"path traversal in filename", [&] { return RawUpload({Header("../../etc/passwd"), Chunk(line1)}); }, C::kInvalidArgument, "filename"},
      {"dot-dot filename", [&] { return RawUpload({Header(".."), Chunk(line1)}); }, C::kInvalidArgument, "filename"},
      {"NUL in filename", [&] { return RawUpload({Header(std::string("a\0b", 3)), Chunk(line1)}); }, C::kInvalidArgument, "filename"},
      {"ESC in filename", [&] { return RawUpload({Header("a\x1b[2Jb.jsonl", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+001B at byte 1"},
      {"CR in filename", [&] { return RawUpload({Header("a\rb.jsonl", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+000D"},
      {"LF in filename", [&] { return RawUpload({Header("a\nb.jsonl", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+000A"},
      {"BEL in filename", [&] { return RawUpload({Header("a\ab.jsonl", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+0007"},
      {"DEL in filename", [&] { return RawUpload({Header("a\x7f.jsonl", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+007F"},
      {"C1 control in filename", [&] { return RawUpload({Header("a\xc2\x9b" "2J.jsonl", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+009B"},
      {"bidi override in filename", [&] { return RawUpload({Header("a\xe2\x80\xaelnosj.exe", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: control character U+202E"},
      {"filename of only spaces", [&] { return RawUpload({Header("   ", 100), Chunk(line1)}); }, C::kInvalidArgument, "filename: blank"},
      {"sha256 not hex", [&] { return RawUpload({Header("a.jsonl", 0, std::string(64, 'z')), Chunk(line1)}); }, C::kInvalidArgument, "sha256: expected 64 hex digits"},
      {"sha256 too short", [&] { return RawUpload({Header("a.jsonl", 0, "abc"), Chunk(line1)}); }, C::kInvalidArgument, "sha256: expected 64 hex digits"},
      {"neither bytes nor sha256", [&] { return RawUpload({Header("a.jsonl"), Chunk(line1)}); }, C::kInvalidArgument, "bytes: required"},
      {"overlong filename", [&] { return RawUpload({Header(std::string(300, 'a')), Chunk(line1)}); }, C::kInvalidArgument, "filename: longer than 255"},
      {"no header first", [&] { return RawUpload({Chunk(line1)}); }, C::kInvalidArgument, "header"},
      {"header twice", [&] { return RawUpload({Header("a.jsonl", 100), Header("b.jsonl", 100)}); }, C::kInvalidArgument, "header: sent twice"},
      {"truncated upload", [&] { return RawUpload({Header("a.jsonl", 1000), Chunk(line1)}); }, C::kDataLoss, "bytes: the header announced 1000"},
      {"wrong sha256", [&] { return RawUpload({Header("a.jsonl", 0, std::string(64, '0')), Chunk(line1)}); }, C::kDataLoss, "sha256 mismatch"},
      {"model missing", create([](auto& r) { r.clear_model(); }), C::kInvalidArgument, "model: required"},
      {"model unknown", create([](auto& r) { r.set_model("gpt-9"); }), C::kNotFound, "model: no model named \"gpt-9\""},
      {"model with traversal", create([](auto& r) { r.set_model("../../etc"); }), C::kNotFound, "model:"},
      {"training_file missing", create([](auto& r) { r.clear_training_file(); }), C::kInvalidArgument, "training_file: required"},
      {"training_file unknown", create([](auto& r) { r.set_training_file("file-nope"); }), C::kNotFound, "training_file: no such file"},
      {"validation_file unknown", create([](auto& r) { r.set_validation_file("file-nope"); }), C::kNotFound, "validation_file: no such file"},
      {"method dpo on chat data", create([](auto& r) { r.mutable_method()->set_type("dpo"); }), C::kInvalidArgument, "training_file: "},
      {"unknown method", create([](auto& r) { r.mutable_method()->set_type("kto"); }), C::kInvalidArgument, "method.type"},
      {"n_epochs 0", create([&](auto& r) { hp(r)->set_n_epochs(0); }), C::kInvalidArgument, "hyperparameters.n_epochs"},
      {"n_epochs too many", create([&](auto& r) { hp(r)->set_n_epochs(1000); }), C::kInvalidArgument, "hyperparameters.n_epochs"},
      {"batch_size 0", create([&](auto& r) { hp(r)->set_batch_size(0); }), C::kInvalidArgument, "hyperparameters.batch_size"},
      {"batch_size huge", create([&](auto& r) { hp(r)->set_batch_size(1 << 20); }), C::kInvalidArgument, "hyperparameters.batch_size"},
      {"lr NaN", create([&](auto& r) { hp(r)->set_learning_rate_multiplier(NAN); }), C::kInvalidArgument, "learning_rate_multiplier"},
      {"lr infinite", create([&](auto& r) { hp(r)->set_learning_rate_multiplier(INFINITY); }), C::kInvalidArgument, "learning_rate_multiplier"},
      {"lr negative", create([&](auto& r) { hp(r)->set_learning_rate_multiplier(-1); }), C::kInvalidArgument, "learning_rate_multiplier"},
      {"lr zero", create([&](auto& r) { hp(r)->set_learning_rate_multiplier(0); }), C::kInvalidArgument, "learning_rate_multiplier"},
      {"LoRA rank 0", create([](auto& r) { r.mutable_lora()->set_rank(0); }), C::kInvalidArgument, "lora.rank"},
      {"LoRA alpha negative", create([](auto& r) { r.mutable_lora()->set_alpha(-2); }), C::kInvalidArgument, "lora.alpha"},
      {"LoRA dropout 1.5", create([](auto& r) { r.mutable_lora()->set_dropout(1.5); }), C::kInvalidArgument, "lora.dropout"},
      {"unknown target module", create([](auto& r) { r.mutable_lora()->add_target_modules("attn.c_attn"); }), C::kInvalidArgument, "lora.target_modules[0]"},
      {"suffix with a slash", create([](auto& r) { r.set_suffix("a/b"); }), C::kInvalidArgument, "suffix"},
      {"suffix too long", create([](auto& r) { r.set_suffix(std::string(65, 'a')); }), C::kInvalidArgument, "suffix"},
      {"17 metadata pairs", create([](auto& r) { for (int i = 0; i < 17; ++i) (*r.mutable_metadata())[absl::StrCat("k", i)] = "v"; }), C::kInvalidArgument, "metadata"},
      {"metadata value too long", create([](auto& r) { (*r.mutable_metadata())["k"] = std::string(600, 'v'); }), C::kInvalidArgument, "metadata[k]"},
      {"unknown priority", create([](auto& r) { r.set_priority(static_cast<v1::JobPriority>(99)); }), C::kInvalidArgument, "priority"},
      {"idempotency key reused with another body", create([](auto& r) { r.set_idempotency_key("once"); r.set_suffix("other"); }), C::kAlreadyExists, "idempotency_key"},
      {"list limit too large", [&] { v1::ListFilesRequest r; r.set_limit(1000); return c.ListFiles(r).status(); }, C::kInvalidArgument, "limit"},
      {"unknown list cursor", [&] { v1::ListJobsRequest r; r.set_after("ftjob-nope"); return c.ListJobs(r).status(); }, C::kInvalidArgument, "after: unknown cursor"},
      {"bad event cursor", [&] { v1::ListJobEventsRequest r; r.set_job_id(job->id()); r.set_after("bogus"); return c.ListJobEvents(r).status(); }, C::kInvalidArgument, "after: not an event id"},
      {"unknown checkpoint step", [&] { return c.DownloadCheckpoint(job->id(), 999, cluster_->root() + "/ck", nullptr).status(); }, C::kNotFound, "step_number"},
      {"register model: bad name", [&] { return cluster_->admin().RegisterModel("a/b", cluster_->demo_dir() + "/model").status(); }, C::kInvalidArgument, "name"},
      {"register model: relative path", [&] { return cluster_->admin().RegisterModel("m", "demo/model").status(); }, C::kInvalidArgument, "path: must be an absolute folder"},
      {"register model: no config.json", [&] { return cluster_->admin().RegisterModel("m", cluster_->root()).status(); }, C::kInvalidArgument, "config.json"},
      {"limit: upload size", [&] { return RawUpload({Header("a.jsonl", 9'000'000), Chunk(line1)}); }, C::kResourceExhausted, "max_upload_bytes"},
      {"limit: examples per file", [&] { std::string many; for (int i = 0; i < 51; ++i) many += line1; return Upload(many); }, C::kResourceExhausted, "line 51: more than 50 examples (max_examples_per_file)"},
      {"limit: jobs in flight", create([](auto&) {}), C::kResourceExhausted, "max_jobs_in_flight_per_project"},
      {"limit: message size", [&] { return RawUpload({Header("a.jsonl", 3 << 20), Chunk(std::string(3 << 20, 'x'))}); }, C::kResourceExhausted, "larger than max"},
      {"limit: uploads in flight per key", [&] { std::vector<std::unique_ptr<OpenUpload>> held; for (int i = 0; i < 4; ++i) held.push_back(std::make_unique<OpenUpload>(*cluster_, cluster_->api_key())); std::this_thread::sleep_for(std::chrono::milliseconds(500)); return Upload(line1); }, C::kResourceExhausted, "max_uploads_in_flight_per_key: this API key already has 4"},
      {"safetensors: header length beyond the file", [&] { return RegisterBadWeights("long", "{}", "", 1'000'000); }, C::kInvalidArgument, "model.safetensors"},
      {"safetensors: header not JSON", [&] { return RegisterBadWeights("json", "{oops", ""); }, C::kInvalidArgument, "model.safetensors"},
      {"safetensors: unknown dtype", [&] { return RegisterBadWeights("dtype", R"({"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')); }, C::kInvalidArgument, "\"dtype\""},
      {"safetensors: shape/size mismatch", [&] { return RegisterBadWeights("shape", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')); }, C::kInvalidArgument, "tensor \"w\""},
      {"safetensors: offsets beyond the data", [&] { return RegisterBadWeights("range", R"({"w":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})", std::string(8, '\0')); }, C::kInvalidArgument, "the data section holds 8 bytes"},
      {"safetensors: overlapping tensors", [&] { return RegisterBadWeights("overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0')); }, C::kInvalidArgument, "model.safetensors"},
      {"resume a queued job", [&] { return c.ResumeJob(job->id()).status(); }, C::kFailedPrecondition, "not paused"},
      {"LoRA alpha 1e308", create([](auto& r) { r.mutable_lora()->set_alpha(1e308); }), C::kInvalidArgument, "lora.alpha: must be in (0, 65536]"},
      {"repeated target module", create([](auto& r) { r.mutable_lora()->add_target_modules("q_proj"); r.mutable_lora()->add_target_modules("q_proj"); }), C::kInvalidArgument, "lora.target_modules[1]: \"q_proj\" is already"},
      {"100 KB model name", create([](auto& r) { r.set_model(std::string(100'000, 'm')); }), C::kInvalidArgument, "model: longer than 128 bytes"},
      {"100 KB job id", [&] { return c.GetJob(std::string(100'000, 'j')).status(); }, C::kInvalidArgument, "job_id: longer than 128 bytes"},
      {"control characters in a job id", [&] { return c.GetJob("ftjob-\x1b[2J\r\n").status(); }, C::kInvalidArgument, "job_id: \"ftjob-\\x1b[2J\\x0d\\x0a\" is not an id"},
      {"100 KB file id", [&] { return c.GetFile(std::string(100'000, 'f')).status(); }, C::kInvalidArgument, "file_id: longer than 128 bytes"},
      {"another job's event id as a cursor", [&] { v1::ListJobEventsRequest r; r.set_job_id(job->id()); r.set_after("ftevent-zzzz-1"); return c.ListJobEvents(r).status(); }, C::kInvalidArgument, "after: not an event id"},
      {"100 KB event cursor", [&] { v1::ListJobEventsRequest r; r.set_job_id(job->id()); r.set_after(std::string(100'000, 'e')); return c.ListJobEvents(r).status(); }, C::kInvalidArgument, "after: not an event id"},
      {"100 KB model id", [&] { return c.GetModel(std::string(100'000, 'm')).status(); }, C::kInvalidArgument, "model_id: longer than 128 bytes"},
      {"999 metadata filter pairs", [&] { v1::ListJobsRequest r; for (int i = 0; i < 999; ++i) (*r.mutable_metadata())[absl::StrCat("k", i)] = "v"; return c.ListJobs(r).status(); }, C::kInvalidArgument, "metadata: 999 pairs; at most 16"},
      {"100 KB list cursor", [&] { v1::ListJobsRequest r; r.set_after(std::string(100'000, 'a')); return c.ListJobs(r).status(); }, C::kInvalidArgument, "after: longer than 128 bytes"},
      {"invalid UTF-8 in a string field", [&] { return c.GetJob("ftjob-\xff\xfe").status(); }, C::kInvalidArgument, "request: not a valid message for this method: a string field holds bytes that are not UTF-8"},
      {"register model: a link out of the folder", [&] { return RegisterLinkedModel(); }, C::kInvalidArgument, "a symbolic link out of the model folder"},
  };
  ASSERT_GE(cases.size(), 40u);
  for (const Case& k : cases) {
    absl::Status st = k.call();
    EXPECT_EQ(st.code(), k.code) << k.name << ": " << st;
    // Input is echoed bounded, and never as SQL.
    EXPECT_LT(st.message().size(), 1024u) << k.name;
    EXPECT_FALSE(absl::StrContains(st.message(), "SELECT")) << k.name << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), k.names))
        << k.name << ": \"" << st.message() << "\" should name \"" << k.names << "\"";
  }
  // Nothing was stored: one file, one job, one blob, no temporaries.
  EXPECT_EQ(c.ListFiles({})->data_size(), 1);
  EXPECT_EQ(c.ListJobs({})->data_size(), 1);
  EXPECT_EQ(c.ListModels()->data_size(), 1);
  EXPECT_TRUE(fs::is_empty(cluster_->root() + "/data/tmp"));
  int blobs = 0;
  for (const auto& e : fs::recursive_directory_iterator(cluster_->root() + "/data/blobs")) {
    blobs += e.is_regular_file();
  }
  EXPECT_EQ(blobs, 1);
}

// A stream that ends without the client's half-close (cancelled, or past its
// deadline) is never stored, even when everything announced arrived; and a
// header that announces neither size nor hash is refused before its body.
TEST_F(BadInputTest, AnUploadCutShortIsNeverStored) {
  const std::string lines = std::string(kGood) + "\n" + kGood + "\n";
  for (CutShort how : {CutShort::kCancel, CutShort::kDeadline}) {
    const char* name = how == CutShort::kCancel ? "cancelled" : "past its deadline";
    absl::Status st = UploadCutShort({Header("a.jsonl"), Chunk(lines)}, how);
    EXPECT_FALSE(st.ok()) << name;
    ExpectNothingStored();
    st = UploadCutShort(
        {Header("a.jsonl", static_cast<int64_t>(lines.size()), Sha256Hex(lines)), Chunk(lines)},
        how);
    EXPECT_FALSE(st.ok()) << name << ", with size and hash";
    ExpectNothingStored();
  }
  absl::Status st = HeaderOnly(Header("a.jsonl"));
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "bytes: required")) << st;
  ExpectNothingStored();
}

// The header's sha256 is hex in either case; a malformed one is refused at
// once, before any of the body is read.
TEST_F(BadInputTest, Sha256IsCheckedAtTheHeader) {
  const std::string line1 = std::string(kGood) + "\n";
  std::string upper = Sha256Hex(line1);
  for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  absl::Status st = RawUpload({Header("a.jsonl", 0, upper), Chunk(line1)});
  EXPECT_TRUE(st.ok()) << st;
  auto files = cluster_->client().ListFiles({});
  ASSERT_EQ(files->data_size(), 1);
  EXPECT_EQ(files->data(0).sha256(), Sha256Hex(line1));
  for (const std::string& bad : {std::string(63, 'a'), std::string(64, 'g'), std::string(65, 'a'),
                                 "sha256:" + std::string(64, 'a')}) {
    st = HeaderOnly(Header("b.jsonl", 100, bad));
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << bad << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "sha256: ")) << st;
  }
  EXPECT_EQ(cluster_->client().ListFiles({})->data_size(), 1);
}

// A database from before names were checked may hold control characters:
// `lathe files list` prints them escaped, never raw to the terminal.
TEST_F(BadInputTest, TheCliEscapesControlCharactersInOldNames) {
  {
    auto store = store::Store::Open(cluster_->root() + "/data/lathe.db");
    ASSERT_TRUE(store.ok()) << store.status();
    v1::File f;
    f.set_id("file-old");
    f.set_filename("evil\x1b[2J\r\a\xe2\x80\xaelnosj.exe");
    f.set_purpose("fine-tune");
    f.set_format("chat");
    f.set_project("default");
    ASSERT_TRUE((*store)->InsertFile(f).ok());
  }
  std::vector<std::string> argv = {Binaries().cli, "--server", cluster_->address(),
                                   "--api_key", cluster_->api_key(), "files", "list"};
  for (const std::string& flag : cluster_->CliTlsFlags()) argv.push_back(flag);
  std::string out;
  ASSERT_EQ(RunCommand(argv, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "evil\\u001B[2J\\u000D\\u0007\\u202Elnosj.exe")) << out;
  EXPECT_EQ(out.find_first_of("\x1b\r\a"), std::string::npos) << out;
  EXPECT_FALSE(absl::StrContains(out, "\xe2\x80\xae")) << out;
}

// Open uploads are capped per API key and per server, refused with
// RESOURCE_EXHAUSTED naming the flag; a cancelled upload frees its slot.
TEST(UploadCapsTest, UploadsInFlightAreCappedPerKeyAndPerServer) {
  auto c = Cluster::Start(TestRoot("upload-caps"), 0,
                          {"--max_uploads_in_flight_per_key=1", "--max_uploads_in_flight=2"});
  ASSERT_TRUE(c.ok()) << c.status();
  Cluster& cluster = **c;
  const std::string a = cluster.api_key();
  const std::string b = cluster.NewKey("default");
  const std::string other_project = cluster.NewKey("other");
  const std::string path = cluster.root() + "/ok.jsonl";
  std::ofstream(path) << kGood << "\n";
  auto upload = [&](const std::string& key) {
    return Client(cluster.NewChannel(), key).UploadFile(path, "fine-tune", nullptr).status();
  };
  {
    auto held_a = std::make_unique<OpenUpload>(cluster, a);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // lathed has it
    absl::Status st = upload(a);
    EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "max_uploads_in_flight_per_key")) << st;

    OpenUpload held_b(cluster, b);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    st = upload(other_project);
    EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "max_uploads_in_flight:")) << st;

    held_a.reset();  // cancelled: its slot comes back
    for (int i = 0; i < 50 && !(st = upload(a)).ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(st.ok()) << st;
  }
  // Every slot is back: each key uploads again.
  for (const std::string& key : {a, b, other_project}) {
    absl::Status st;
    for (int i = 0; i < 50 && !(st = upload(key)).ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(st.ok()) << st;
  }
}

}  // namespace
}  // namespace lathe::testing
