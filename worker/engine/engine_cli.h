// The engine's local subcommands, for `lathe-worker <subcommand>`:
//   train SPEC.json     runs Train() on a spec (see train_spec.h), printing
//                       one JSON line per step and a {"summary": ...} line
//                       on stdout; logs go to stderr
//   make-demo --out DIR writes the demo model and data (see demo.h)
#ifndef LATHE_WORKER_ENGINE_ENGINE_CLI_H_
#define LATHE_WORKER_ENGINE_ENGINE_CLI_H_

namespace lathe::engine {

// argv[1] is the subcommand. Returns the process exit code: 0 on success,
// 1 when the command failed (the error printed on stderr), 2 for bad usage.
// Never throws.
int RunEngineCommand(int argc, char** argv);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ENGINE_CLI_H_
