// c10d process group (see group.h). The backends come compiled inside libtorch; this file constructs
// them and names failures. ProcessGroupGloo's header needs Gloo's own headers, which the PyPI wheel lacks
// (Debian's libgloo-dev provides them; tests/unit/collectives_test.cpp guards that pairing).
#include "dist/group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "dist/nccl_backend.h"
#include "util/error.h"

namespace mt::dist {

const char* name(Backend b) { return b == Backend::kNccl ? "nccl" : "gloo"; }

namespace {

constexpr auto kBeat = std::chrono::milliseconds(500);  // heartbeat period; a rank silent for 6 beats stopped

bool loopback(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1"; }

// Gloo's network device: the interface GLOO_SOCKET_IFNAME names (as torch.distributed reads it), the
// loopback for a one-machine job, else the address this host's name resolves to.
std::shared_ptr<::gloo::transport::Device> gloo_device(const Launch& l) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (loopback(l.master_addr)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

struct Group::Impl {
  Launch launch;
  at::Device device{at::kCPU};
  Backend backend = Backend::kGloo;
  c10::intrusive_ptr<c10d::Store> store;  // prefixed: our keys never meet torchrun's
  c10::intrusive_ptr<c10d::Backend> pg;
  std::string where;  // "127.0.0.1:29500 (hosted by rank 0)"

  // Heartbeat: each rank bumps its counter in the store; after a failed collective the counters
  // that stopped moving name the rank that died.
  std::thread beat;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;

  static std::string beat_key(int64_t r) { return "alive/" + std::to_string(r); }
  static std::string report_key(int64_t r) { return "failed/" + std::to_string(r); }
  void start_beat() {
    beat = std::thread([this] {
      std::unique_lock<std::mutex> lk(mu);
      while (!stop) {
        lk.unlock();
        try {
          store->add(beat_key(launch.rank), 1);
        } catch (...) {
          return;  // the store is gone: a failed collective will say so
        }
        lk.lock();
        cv.wait_for(lk, kBeat, [this] { return stop; });
      }
    });
  }
  void stop_beat() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv.notify_all();
    if (beat.joinable()) beat.join();
  }

  // Which ranks stopped beating, as a phrase for the error; empty when all are alive.
  std::string who_stopped() {
    const int64_t w = launch.world_size;
    std::vector<int64_t> a(w), b(w), reported(w);
    try {
      // Peers of a dead rank fail too, and stop beating when they exit: those that say they failed in a
      // collective are not the cause.
      store->add(report_key(launch.rank), 1);
      for (int64_t r = 0; r < w; ++r) a[r] = store->add(beat_key(r), 0);
      std::this_thread::sleep_for(6 * kBeat);
      for (int64_t r = 0; r < w; ++r) b[r] = store->add(beat_key(r), 0);
      for (int64_t r = 0; r < w; ++r) reported[r] = store->add(report_key(r), 0);
    } catch (const std::exception&) {
      return launch.agent_store ? str("torchrun's store at ", where, " is unreachable (its agent stopped?)")
                                : str("rank 0 stopped (it hosts the rendezvous store at ", where, ", which is gone)");
    }
    std::string dead;
    for (int64_t r = 0; r < w; ++r)
      if (r != launch.rank && a[r] == b[r] && !reported[r]) dead += str(dead.empty() ? "" : ", ", r);
    if (dead.empty()) return "";
    return str("rank", dead.find(',') == std::string::npos ? " " : "s ", dead, " stopped (no sign of life for ",
               std::chrono::duration<double>(6 * kBeat).count(), " s)");
  }
};

Group::Group() : impl_(std::make_unique<Impl>()) {}

Group::~Group() {
  impl_->stop_beat();
  impl_->pg.reset();
}

std::unique_ptr<Group> Group::join(const Launch& l, at::Device device, const GroupOptions& o) {
  MT_CHECK(l.world_size >= 1 && l.rank >= 0 && l.rank < l.world_size, "data parallel: rank ", l.rank,
           " is not in [0, world_size = ", l.world_size, ")");
  std::unique_ptr<Group> g(new Group());
  Impl& m = *g->impl_;
  m.launch = l;
  m.device = device;
  m.backend = device.is_cuda() ? Backend::kNccl : Backend::kGloo;
  const bool host = l.rank == 0 && !l.agent_store;
  m.where = str(l.master_addr, ":", l.master_port, l.agent_store ? " (torchrun's agent store)" : " (hosted by rank 0)");
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(l.master_port);
  so.isServer = host;
  // Every rank counts itself in at a store we host (the host waits for all); torchrun's agent counts
  // its workers itself.
  if (!l.agent_store) so.numWorkers = static_cast<std::size_t>(l.world_size);
  so.waitWorkers = !l.agent_store;
  so.timeout = o.join_timeout;
  try {
    auto tcp = c10::make_intrusive<c10d::TCPStore>(l.master_addr, so);
    // A restarted job (torchrun --max-restarts) meets in the same agent store: a fresh namespace per
    // attempt keeps the old attempt's keys out of the way.
    const std::string prefix = str("moshi-ttt/", l.run_id, "/", std::max<int64_t>(0, l.restart_count));
    m.store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
  } catch (const std::exception& e) {
    fail("data parallel: ", l.describe(), " could not join the rendezvous at ", m.where, ": ", error_message(e));
  }
  try {
    if (m.backend == Backend::kNccl) {
      m.pg = make_nccl_backend(m.store, l.rank, l.world_size, o.timeout);
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(o.timeout);
      opts->devices.push_back(gloo_device(l));
      m.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(m.store, static_cast<int>(l.rank),
                                                         static_cast<int>(l.world_size), opts);
    }
  } catch (const mt::Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("data parallel: ", l.describe(), " could not build the ", name(m.backend), " process group (rendezvous ",
         m.where, "): ", error_message(e));
  }
  m.start_beat();
  return g;
}

int64_t Group::rank() const { return impl_->launch.rank; }
int64_t Group::size() const { return impl_->launch.world_size; }
Backend Group::backend() const { return impl_->backend; }
at::Device Group::device() const { return impl_->device; }

void Group::fail_collective(const char* op, const std::exception& e) {
  const std::string who = impl_->who_stopped();
  fail("data parallel: ", impl_->launch.describe(), ": ", op, " failed", who.empty() ? std::string() : ": " + who, " (",
       name(impl_->backend), ": ", error_message(e), ")");
}

// ---- collectives ------------------------------------------------------------------------------------

namespace {

void need_flat(const at::Tensor& t, const char* op, const char* what) {
  MT_CHECK(t.defined() && t.is_contiguous(), "data parallel: ", op, ": ", what, " must be a defined contiguous tensor");
}

}  // namespace

template <class F>
Pending Group::start(const char* op, F&& launch) {
  try {
    return Pending(this, launch(), op);
  } catch (const std::exception& e) {
    fail_collective(op, e);
  }
}

Pending Group::all_reduce(at::Tensor& t) {
  need_flat(t, "all_reduce", "the tensor");
  std::vector<at::Tensor> v{t};
  return start("all_reduce", [&] { return impl_->pg->allreduce(v, c10d::AllreduceOptions{}); });
}

Pending Group::reduce_scatter(at::Tensor& out, at::Tensor& in) {
  need_flat(out, "reduce_scatter", "the output");
  need_flat(in, "reduce_scatter", "the input");
  MT_CHECK(in.numel() == out.numel() * size() && in.scalar_type() == out.scalar_type(),
           "data parallel: reduce_scatter: input of ", in.numel(), " ", in.scalar_type(), " for an output of ",
           out.numel(), " ", out.scalar_type(), " on ", size(), " ranks");
  return start("reduce_scatter",
               [&] { return impl_->pg->_reduce_scatter_base(out, in, c10d::ReduceScatterOptions{}); });
}

Pending Group::all_gather(at::Tensor& out, at::Tensor& in) {
  need_flat(out, "all_gather", "the output");
  need_flat(in, "all_gather", "the input");
  MT_CHECK(out.numel() == in.numel() * size() && in.scalar_type() == out.scalar_type(),
           "data parallel: all_gather: ", "output of ", out.numel(), " ", out.scalar_type(), " for an input of ",
           in.numel(), " ", in.scalar_type(), " on ", size(), " ranks");
  return start("all_gather", [&] { return impl_->pg->_allgather_base(out, in, c10d::AllgatherOptions{}); });
}

Pending Group::broadcast(at::Tensor& t, int64_t root) {
  need_flat(t, "broadcast", "the tensor");
  std::vector<at::Tensor> v{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  return start("broadcast", [&] { return impl_->pg->broadcast(v, o); });
}

void Group::barrier() {
  at::Tensor t = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(impl_->device));
  all_reduce(t).wait();  // a barrier that works the same on every backend and names a missing rank
}

void Group::sum(std::vector<double>& v) {
  if (v.empty()) return;
  at::Tensor t = at::tensor(v, at::kDouble).to(impl_->device);
  all_reduce(t).wait();
  t = t.cpu().contiguous();
  std::memcpy(v.data(), t.data_ptr<double>(), v.size() * sizeof(double));
}

std::vector<std::string> Group::all_gather_bytes(const std::string& mine) {
  const int64_t w = size();
  const auto on = at::TensorOptions().device(impl_->device);
  at::Tensor len = at::tensor({static_cast<int64_t>(mine.size())}, at::kLong).to(impl_->device);
  at::Tensor lens = at::empty({w}, on.dtype(at::kLong));
  all_gather(lens, len).wait();
  const at::Tensor lc = lens.cpu().contiguous();
  const int64_t* len_of = lc.data_ptr<int64_t>();
  const int64_t most = *std::max_element(len_of, len_of + w);
  at::Tensor buf = at::zeros({std::max<int64_t>(most, 1)}, at::kByte);
  if (!mine.empty()) std::memcpy(buf.data_ptr(), mine.data(), mine.size());
  buf = buf.to(impl_->device);
  at::Tensor all = at::empty({w * buf.numel()}, on.dtype(at::kByte));
  all_gather(all, buf).wait();
  const at::Tensor ac = all.cpu();
  std::vector<std::string> out(static_cast<size_t>(w));
  for (int64_t r = 0; r < w; ++r) out[r].assign(static_cast<const char*>(ac.data_ptr()) + r * buf.numel(), len_of[r]);
  return out;
}

std::string Group::share_from_leader(const std::string& key, const std::string& value, std::chrono::milliseconds wait) {
  const std::string k = "shared/" + key;
  try {
    if (rank() == 0) {
      impl_->store->set(k, std::vector<uint8_t>(value.begin(), value.end()));
      return value;
    }
    impl_->store->wait({k}, wait);
    const std::vector<uint8_t> v = impl_->store->get(k);
    return std::string(v.begin(), v.end());
  } catch (const std::exception& e) {
    fail_collective(("waiting for rank 0's " + key).c_str(), e);
  }
}

// ---- Pending ----------------------------------------------------------------------------------------

Pending::Pending() = default;
Pending::~Pending() = default;
Pending::Pending(Pending&&) noexcept = default;
Pending& Pending::operator=(Pending&&) noexcept = default;
Pending::Pending(Group* g, c10::intrusive_ptr<c10d::Work> w, const char* op)
    : group_(g), work_(std::move(w)), op_(op) {}
bool Pending::valid() const { return static_cast<bool>(work_); }

void Pending::wait() {
  if (!work_) return;
  try {
    work_->wait();
  } catch (const std::exception& e) {
    work_.reset();
    group_->fail_collective(op_, e);
  }
  work_.reset();
}

}  // namespace mt::dist
