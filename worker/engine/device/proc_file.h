// Reading the "Key:   N kB" lines of Linux's /proc files (/proc/meminfo,
// /proc/self/status), where the device module finds the CPU's memory and
// the process's peak resident size.
#ifndef LATHE_WORKER_ENGINE_DEVICE_PROC_FILE_H_
#define LATHE_WORKER_ENGINE_DEVICE_PROC_FILE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe::engine {

// The whole text of `path`. NOT_FOUND when it cannot be read.
absl::StatusOr<std::string> ReadProcFile(const std::string& path);

// The bytes of the line "`key`:   N kB" of `text` ("MemTotal", "VmHWM").
// NOT_FOUND when no line starts with `key`:; INVALID_ARGUMENT when its value
// is not "N kB".
absl::StatusOr<int64_t> ProcKilobyteField(absl::string_view text,
                                          absl::string_view key);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DEVICE_PROC_FILE_H_
