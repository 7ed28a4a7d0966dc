// upload_memory_bench: lathed's resident memory under N concurrent
// worst-case uploads (not a test; README "Limits" quotes its figures).
//
// Starts a real lathed (TLS on loopback, caps raised to N), then runs
// `rounds` rounds of N uploads at once, each of a file whose lines are the
// worst cases for a line parser at just under --max_line_bytes: a
// million-element array ({"text":"a","x":[1,1,...]}), a deep nest of
// arrays, and one 3.9 MB string. Prints VmRSS before, the peak (VmHWM)
// and VmRSS after each round, from /proc/<lathed pid>/status.
//
//   build/tests/upload_memory_bench [--uploads 8] [--rounds 3]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

constexpr size_t kLine = 3'900'000;

// A /proc/<pid>/status field in KiB ("VmRSS", "VmHWM"), or -1.
long StatusKiB(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      return std::strtol(line.c_str() + field.size() + 1, nullptr, 10);
    }
  }
  return -1;
}

// Resets VmHWM to the current RSS (Linux: write 5 to clear_refs).
void ResetPeak(pid_t pid) {
  std::ofstream(absl::StrCat("/proc/", pid, "/clear_refs")) << "5";
}

std::string WorstCaseFile() {
  std::string wide = R"({"text":"a","x":[)";
  while (wide.size() < kLine) wide += "1,";
  wide += "1]}\n";
  const std::string head = R"({"text":"a","x":)";
  const size_t depth = (kLine - head.size()) / 2;
  std::string deep =
      head + std::string(depth, '[') + std::string(depth, ']') + "}\n";
  std::string text = R"({"text":")" + std::string(kLine, 'a') + "\"}\n";
  return wide + deep + text;
}

int Run(int uploads, int rounds) {
  auto c =
      Cluster::Start(TestRoot("upload-bench"), 0,
                     {absl::StrCat("--max_uploads_in_flight_per_key=", uploads),
                      absl::StrCat("--max_uploads_in_flight=", uploads)});
  if (!c.ok()) {
    std::cerr << c.status() << "\n";
    return 1;
  }
  Cluster& cluster = **c;
  const pid_t pid = cluster.lathed().pid();
  const std::string path = cluster.root() + "/worst.jsonl";
  std::ofstream(path, std::ios::binary) << WorstCaseFile();
  std::printf(
      "lathed pid %d; %d concurrent uploads of a %.1f MB file "
      "(3 worst-case lines of %.1f MB)\n",
      pid, uploads, 3 * kLine / 1e6 + 0.0, kLine / 1e6);
  std::printf("%-8s %12s %12s %12s %8s\n", "round", "before MiB", "peak MiB",
              "after MiB", "stored");
  for (int r = 1; r <= rounds; ++r) {
    ResetPeak(pid);
    const long before = StatusKiB(pid, "VmRSS");
    std::vector<std::thread> threads;
    std::atomic<int> stored{0};
    for (int i = 0; i < uploads; ++i) {
      threads.emplace_back([&] {
        Client client(cluster.NewChannel(), cluster.api_key());
        auto f = client.UploadFile(path, "fine-tune", nullptr);
        if (f.ok()) {
          ++stored;
        } else {
          std::cerr << f.status() << "\n";
        }
      });
    }
    for (auto& t : threads) t.join();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const long peak = StatusKiB(pid, "VmHWM");
    const long after = StatusKiB(pid, "VmRSS");
    std::printf("%-8d %12.1f %12.1f %12.1f %5d/%d\n", r, before / 1024.0,
                peak / 1024.0, after / 1024.0, stored.load(), uploads);
  }
  return 0;
}

}  // namespace
}  // namespace lathe::testing

int main(int argc, char** argv) {
  int uploads = 8;
  int rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--uploads") == 0) {
      uploads = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--rounds") == 0) {
      rounds = std::atoi(argv[i + 1]);
    } else {
      std::cerr << "usage: upload_memory_bench [--uploads N] [--rounds R]\n";
      return 2;
    }
  }
  if (uploads < 1 || rounds < 1) {
    std::cerr << "--uploads and --rounds must be at least 1\n";
    return 2;
  }
  return lathe::testing::Run(uploads, rounds);
}
