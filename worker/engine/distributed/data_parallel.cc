#include "worker/engine/distributed/data_parallel.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>
#include <torch/version.h>
#if LATHE_HAS_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "spdlog/spdlog.h"

namespace lathe::engine {
namespace {

// LibTorch 2.x asks for a libuv store by default, which Debian's build (and
// any built without libuv) refuses; the classic one is in every build.
void ClassicStore(c10d::TCPStoreOptions& o) {
#if TORCH_VERSION_MAJOR >= 2 && (TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 3)
  o.useLibUV = false;
#else
  (void)o;
#endif
}

std::chrono::milliseconds Millis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// A collective's failure: a peer lost, stuck or unreachable. Not the
// user's: the attempt is retried on a new gang.
absl::Status Lost(int rank, const char* what, const std::exception& e) {
  std::string message = e.what();
  // c10's messages carry a C++ backtrace after the first line.
  if (size_t nl = message.find('\n'); nl != std::string::npos) {
    message.resize(nl);
  }
  return absl::UnavailableError(absl::StrCat(
      "data-parallel ", what, " failed on rank ", rank,
      " (another rank was lost or timed out): ", message));
}

// "host:port" or "[v6]:port" -> host, port.
absl::Status SplitAddress(const std::string& address, std::string* host,
                          int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), port) || *port <= 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rendezvous: \"", address, "\" is not host:port"));
  }
  *host = address.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return absl::OkStatus();
}

}  // namespace

struct Rendezvous::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

Rendezvous::Rendezvous(std::unique_ptr<Impl> impl, absl::Duration timeout)
    : impl_(std::move(impl)), timeout_(timeout) {}
Rendezvous::~Rendezvous() = default;

int Rendezvous::port() const { return impl_->store->getPort(); }

absl::StatusOr<std::shared_ptr<Rendezvous>> Rendezvous::Host(
    int port, int world_size, absl::Duration timeout) {
  if (port < 0 || port > 65535 || world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous: port ", port, ", world size ", world_size));
  }
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(port);
  o.isServer = true;
  o.numWorkers = world_size;
  o.waitWorkers = false;  // the others come once lathed has told them where
  o.timeout = Millis(timeout);
  ClassicStore(o);
  try {
    auto impl = std::make_unique<Impl>();
    impl->store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
    return std::shared_ptr<Rendezvous>(new Rendezvous(std::move(impl), timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rendezvous: cannot listen on port ", port, ": ",
        std::string(e.what()).substr(0, std::string(e.what()).find('\n'))));
  }
}

absl::StatusOr<std::shared_ptr<Rendezvous>> Rendezvous::Connect(
    const std::string& address, absl::Duration timeout) {
  std::string host;
  int port = 0;
  if (absl::Status st = SplitAddress(address, &host, &port); !st.ok()) {
    return st;
  }
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(port);
  o.isServer = false;
  o.timeout = Millis(timeout);
  ClassicStore(o);
  try {
    auto impl = std::make_unique<Impl>();
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, o);
    return std::shared_ptr<Rendezvous>(new Rendezvous(std::move(impl), timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rendezvous: cannot reach rank 0's store at ", address, ": ",
        std::string(e.what()).substr(0, std::string(e.what()).find('\n'))));
  }
}

// One backend's process group; the collectives below call whichever is
// set (they share no base class across LibTorch 1.13 and 2.x).
struct DataParallel::Group {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#if LATHE_HAS_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
  torch::Device device = torch::kCPU;  // where the collectives' tensors live

  template <typename F>
  auto Run(F&& f) {
#if LATHE_HAS_NCCL
    if (nccl) return f(*nccl);
#endif
    return f(*gloo);
  }
};

DataParallel::DataParallel(std::shared_ptr<Rendezvous> rendezvous,
                           DataParallelOptions options,
                           std::unique_ptr<Group> group)
    : rendezvous_(std::move(rendezvous)),
      options_(std::move(options)),
      group_(std::move(group)) {}
DataParallel::~DataParallel() = default;

const char* DataParallel::backend() const {
#if LATHE_HAS_NCCL
  if (group_->nccl) return "nccl";
#endif
  return "gloo";
}

absl::StatusOr<std::unique_ptr<DataParallel>> DataParallel::Join(
    std::shared_ptr<Rendezvous> rendezvous, const DataParallelOptions& options,
    const torch::Device& device) {
  if (options.world_size < 1 || options.rank < 0 ||
      options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", options.rank, " of world size ", options.world_size));
  }
  auto group = std::make_unique<Group>();
  try {
#if LATHE_HAS_NCCL
    if (device.is_cuda()) {
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = Millis(options.timeout);
      group->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          rendezvous->impl().store, options.rank, options.world_size, o);
      group->device = device;
    }
    if (!group->nccl)
#endif
    {
      auto o = c10d::ProcessGroupGloo::Options::create();
      o->timeout = Millis(options.timeout);
      if (!options.gloo_host.empty()) {
        o->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(options.gloo_host));
      } else if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
                 ifname != nullptr && *ifname != '\0') {
        o->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else {
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      // Gloo's pairs connect during construction: this waits for every
      // rank (up to the store's timeout).
      group->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
          rendezvous->impl().store, options.rank, options.world_size, o);
      group->device = torch::kCPU;
    }
  } catch (const std::exception& e) {
    return Lost(options.rank, "rendezvous", e);
  }
  std::unique_ptr<DataParallel> dp(
      new DataParallel(std::move(rendezvous), options, std::move(group)));
  spdlog::info("data-parallel: rank {} of {} joined ({})", options.rank,
               options.world_size, dp->backend());
  return dp;
}

void DataParallel::ShareOf(size_t size, int rank, int world_size,
                           size_t* first, size_t* count) {
  const size_t n = static_cast<size_t>(world_size);
  const size_t r = static_cast<size_t>(rank);
  const size_t base = size / n;
  const size_t extra = size % n;
  *first = r * base + std::min(r, extra);
  *count = base + (r < extra ? 1 : 0);
}

std::vector<std::vector<size_t>> DataParallel::Shard(
    const std::vector<std::vector<size_t>>& micro_batches) const {
  std::vector<std::vector<size_t>> out;
  for (const std::vector<size_t>& batch : micro_batches) {
    size_t first = 0, count = 0;
    ShareOf(batch.size(), rank(), world_size(), &first, &count);
    if (count == 0) continue;
    out.emplace_back(batch.begin() + first, batch.begin() + first + count);
  }
  return out;
}

absl::Status DataParallel::SumInPlace(std::vector<double>& values) {
  if (values.empty()) return absl::OkStatus();
  try {
    torch::Tensor t =
        torch::from_blob(values.data(), {static_cast<int64_t>(values.size())},
                         torch::kFloat64)
            .to(group_->device, /*non_blocking=*/false, /*copy=*/true);
    std::vector<torch::Tensor> ts{t};
    group_->Run([&](auto& g) { return g.allreduce(ts); })->wait();
    torch::Tensor back = ts[0].cpu().contiguous();
    std::copy_n(back.data_ptr<double>(), values.size(), values.begin());
  } catch (const std::exception& e) {
    return Lost(rank(), "sum", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> DataParallel::Max(int64_t value) {
  try {
    std::vector<torch::Tensor> ts{
        torch::full({1}, value, torch::TensorOptions(torch::kInt64)
                                    .device(group_->device))};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::MAX;
    group_->Run([&](auto& g) { return g.allreduce(ts, o); })->wait();
    return ts[0].cpu().item<int64_t>();
  } catch (const std::exception& e) {
    return Lost(rank(), "stop check", e);
  }
}

absl::Status DataParallel::Broadcast(const std::vector<torch::Tensor>& tensors) {
  try {
    torch::NoGradGuard no_grad;
    for (const torch::Tensor& t : tensors) {
      std::vector<torch::Tensor> ts{t.detach().to(group_->device).contiguous()};
      group_->Run([&](auto& g) { return g.broadcast(ts); })->wait();
      t.copy_(ts[0]);
    }
  } catch (const std::exception& e) {
    return Lost(rank(), "broadcast", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<double> DataParallel::AllReduceGradients(
    const std::vector<torch::Tensor>& tensors, double weight,
    int64_t bucket_bytes) {
  // The total weight, and on how many ranks each gradient exists: one no
  // rank made stays undefined (as it would on one worker, where the
  // optimizer then leaves its tensor alone).
  std::vector<double> total{weight};
  for (const torch::Tensor& t : tensors) total.push_back(t.grad().defined());
  if (absl::Status st = SumInPlace(total); !st.ok()) return st;
  torch::NoGradGuard no_grad;
  // Buckets of consecutive gradients of one dtype, flattened into one
  // buffer each (as DDP's reducer does), all reduced at once.
  struct Bucket {
    std::vector<torch::Tensor> grads;
    torch::Tensor flat;
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::vector<Bucket> buckets;
  int64_t bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (total[i + 1] == 0) continue;
    const torch::Tensor& t = tensors[i];
    torch::Tensor& grad = const_cast<torch::Tensor&>(t).mutable_grad();
    if (!grad.defined()) grad = torch::zeros_like(t);
    const int64_t size = grad.numel() * static_cast<int64_t>(grad.element_size());
    if (buckets.empty() || bytes + size > bucket_bytes ||
        buckets.back().grads.front().scalar_type() != grad.scalar_type()) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().grads.push_back(grad);
    bytes += size;
  }
  try {
    for (Bucket& b : buckets) {
      std::vector<torch::Tensor> flat;
      flat.reserve(b.grads.size());
      for (const torch::Tensor& g : b.grads) flat.push_back(g.reshape({-1}));
      b.flat = torch::cat(flat).to(group_->device);
      // Each rank's share of the step, weighted by its part of the total.
      b.flat.mul_(weight);
      std::vector<torch::Tensor> ts{b.flat};
      b.work = group_->Run([&](auto& g) { return g.allreduce(ts); });
    }
    for (Bucket& b : buckets) {
      b.work->wait();
      if (total[0] > 0) {
        b.flat.div_(total[0]);
      } else {
        b.flat.zero_();
      }
      int64_t offset = 0;
      for (torch::Tensor& g : b.grads) {
        g.copy_(b.flat.narrow(0, offset, g.numel()).view_as(g));
        offset += g.numel();
      }
    }
  } catch (const std::exception& e) {
    return Lost(rank(), "gradient all-reduce", e);
  }
  return total[0];
}

absl::StatusOr<std::map<std::string, double>> DataParallel::WeightedMeans(
    const std::map<std::string, double>& values, double weight,
    double total_weight) {
  if (total_weight <= 0) return std::map<std::string, double>{};
  if (!names_known_) {
    // Rank 0's share is never empty when any is (Shard): it says once
    // which figures the objective reports, through the store.
    auto& store = *rendezvous_->impl().store;
    const std::string key = "lathe/value_names";
    try {
      if (rank() == 0) {
        std::vector<std::string> names;
        for (const auto& [name, value] : values) names.push_back(name);
        const std::string joined = absl::StrJoin(names, "\n");
        store.set(key, std::vector<uint8_t>(joined.begin(), joined.end()));
        value_names_ = std::move(names);
      } else {
        const std::vector<uint8_t> got = store.get(key);
        const std::string joined(got.begin(), got.end());
        value_names_.clear();
        if (!joined.empty()) value_names_ = absl::StrSplit(joined, '\n');
      }
    } catch (const std::exception& e) {
      return Lost(rank(), "figure names", e);
    }
    names_known_ = true;
  }
  std::vector<double> sums;
  sums.reserve(value_names_.size());
  for (const std::string& name : value_names_) {
    auto it = values.find(name);
    sums.push_back(it == values.end() ? 0.0 : it->second * weight);
  }
  if (absl::Status st = SumInPlace(sums); !st.ok()) return st;
  std::map<std::string, double> out;
  for (size_t i = 0; i < value_names_.size(); ++i) {
    out[value_names_[i]] = sums[i] / total_weight;
  }
  return out;
}

}  // namespace lathe::engine
