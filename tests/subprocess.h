// Real processes for integration tests: start a binary with arguments, its
// output going to a log file; signal it; wait for it.
#ifndef LATHE_TESTS_SUBPROCESS_H_
#define LATHE_TESTS_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace lathe::testing {

class Subprocess {
 public:
  // Starts argv[0] (a path, or a name looked up in PATH) with stdout and stderr appended to `log_path`.
  Subprocess(const std::vector<std::string>& argv, const std::string& log_path);
  ~Subprocess();  // SIGKILLs the process if still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  void Signal(int sig);
  // Waits up to `timeout` for exit; returns the exit code, 128+signal, or -1
  // if still running. Once it has exited, returns the same code at once.
  int Wait(absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
};

// Runs a command to completion (up to `timeout`); returns its exit code and
// fills `output` with stdout+stderr.
int RunCommand(const std::vector<std::string>& argv, std::string* output,
               absl::Duration timeout = absl::Minutes(5));

// Polls for `path` to exist and be non-empty; returns its content or "".
std::string WaitForFile(const std::string& path, absl::Duration timeout);

std::string ReadFileOrEmpty(const std::string& path);

}  // namespace lathe::testing

#endif  // LATHE_TESTS_SUBPROCESS_H_
