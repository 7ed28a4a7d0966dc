// The `lathe` command line: parses a command, calls the client library and
// prints text for people or JSON (-o json) for scripts.
#ifndef LATHE_CLI_COMMANDS_H_
#define LATHE_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace lathe::cli {

// Runs `lathe <args>`; returns the process exit code (0 ok, 1 failed job or
// error, 2 usage).
int Run(const std::vector<std::string>& args);

}  // namespace lathe::cli

#endif  // LATHE_CLI_COMMANDS_H_
