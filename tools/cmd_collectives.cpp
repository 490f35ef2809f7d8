// moshi-ttt collectives [--nproc N | under torchrun] [--sizes 1,4KiB,256MiB] [--dtypes float32,bfloat16]:
// the data-parallel collectives on this job's c10d process group, checked for exact results and timed
// (see src/dist/selftest.h). Exits 1 when any element is wrong.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dist/group.h"
#include "dist/launch.h"
#include "dist/selftest.h"
#include "tools/commands.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/runtime.h"

namespace mt::cli {

namespace {

struct CollectivesOpts {
  int64_t nproc = 1;
  std::vector<std::string> sizes{"4B", "4KiB", "1MiB", "25MiB"}, dtypes{"float32", "bfloat16"},
      ops{"all_reduce", "reduce_scatter", "all_gather", "broadcast"};
  int iters = 3;
  std::string device = "cpu", json;
};

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32" || s == "fp32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  if (s == "float16" || s == "fp16") return at::kHalf;
  fail("collectives: --dtypes: unknown dtype '", s, "' (float32, bfloat16, float16)");
}

dist::Collective parse_op(const std::string& s) {
  for (auto c : {dist::Collective::kAllReduce, dist::Collective::kReduceScatter, dist::Collective::kAllGather,
                 dist::Collective::kBroadcast})
    if (s == dist::name(c)) return c;
  fail("collectives: --ops: unknown collective '", s, "' (all_reduce, reduce_scatter, all_gather, broadcast)");
}

std::string human_bytes(int64_t b) {
  char s[32];
  if (b >= (1 << 30))
    std::snprintf(s, sizeof s, "%.4g GiB", b / 1073741824.0);
  else if (b >= (1 << 20))
    std::snprintf(s, sizeof s, "%.4g MiB", b / 1048576.0);
  else if (b >= 1024)
    std::snprintf(s, sizeof s, "%.4g KiB", b / 1024.0);
  else
    std::snprintf(s, sizeof s, "%lld B", (long long)b);
  return s;
}

int run_collectives(const CollectivesOpts& o, const std::vector<std::string>& argv) {
  dist::Launch l = dist::launch_from_env();
  if (o.nproc > 1) {
    MT_CHECK(!l.active(), "--nproc ", o.nproc, " with RANK/WORLD_SIZE already set: use one or the other");
    return dist::spawn_ranks(o.nproc, argv);
  }
  // A group of one (torchrun --nproc-per-node 1) still runs every collective through the backend: the
  // only way to exercise NCCL on a machine with one GPU.
  MT_CHECK(l.active() || std::getenv("RANK"), "collectives: give it ranks: --nproc N, or start it with torchrun");
  at::Device dev = parse_device(o.device);
  if (dev.is_cuda() && !dev.has_index()) dev = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(l.local_rank));
  dist::SelfTestOptions so;
  so.sizes_bytes.clear();
  for (const auto& s : o.sizes) so.sizes_bytes.push_back(dist::parse_bytes(s));
  so.dtypes.clear();
  for (const auto& s : o.dtypes) so.dtypes.push_back(parse_dtype(s));
  so.ops.clear();
  for (const auto& s : o.ops) so.ops.push_back(parse_op(s));
  so.iters = o.iters;
  auto g = dist::Group::join(l, dev);
  const auto res = dist::run_selftest(*g, so);
  int64_t wrong = 0;
  for (const auto& r : res) wrong += r.wrong;
  if (g->rank() != 0) return wrong ? 1 : 0;
  std::printf("%s, %lld ranks, device %s\n", dist::name(g->backend()), (long long)g->size(), dev.str().c_str());
  std::printf("%-15s %-9s %12s %10s %12s %12s %s\n", "collective", "dtype", "size", "time", "algbw GB/s", "busbw GB/s",
              "exact");
  nlohmann::json lines = nlohmann::json::array();
  for (const auto& r : res) {
    std::printf("%-15s %-9s %12s %8.3fms %12.3f %12.3f %s\n", dist::name(r.op), c10::toString(r.dtype),
                human_bytes(r.bytes).c_str(), r.seconds * 1e3, r.algbw_gbs, r.busbw_gbs,
                r.wrong ? str(r.wrong, " wrong").c_str() : "yes");
    lines.push_back({{"collective", dist::name(r.op)},
                     {"dtype", c10::toString(r.dtype)},
                     {"bytes", r.bytes},
                     {"ranks", g->size()},
                     {"backend", dist::name(g->backend())},
                     {"seconds", r.seconds},
                     {"algbw_gbs", r.algbw_gbs},
                     {"busbw_gbs", r.busbw_gbs},
                     {"wrong", r.wrong}});
  }
  if (!o.json.empty()) {
    std::string text;
    for (const auto& j : lines) text += j.dump() + "\n";
    atomic_write(o.json, text);
  }
  if (wrong) std::fprintf(stderr, "error: collectives: %lld elements differ from the exact result\n", (long long)wrong);
  return wrong ? 1 : 0;
}

}  // namespace

void add_collectives(CLI::App& app) {
  auto o = std::make_shared<CollectivesOpts>();
  auto* sub =
      app.add_subcommand("collectives", "check and time the data-parallel collectives (c10d Gloo / NCCL) of this job");
  sub->add_option("--nproc", o->nproc, "run N ranks on this machine (or start under torchrun)")->capture_default_str();
  sub->add_option("--sizes", o->sizes, "tensor sizes: 4B 4KiB 25MiB 256MiB ...")->delimiter(',')->capture_default_str();
  sub->add_option("--dtypes", o->dtypes, "float32, bfloat16, float16")->delimiter(',')->capture_default_str();
  sub->add_option("--ops", o->ops, "all_reduce, reduce_scatter, all_gather, broadcast")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--iters", o->iters, "timed repetitions per case")->capture_default_str();
  sub->add_option("--device", o->device, "cpu (Gloo) or cuda (NCCL, cuda:LOCAL_RANK)")->capture_default_str();
  sub->add_option("--json", o->json, "write one JSON line per case here (rank 0)");
  set_handler(sub, [o]() {
    std::vector<std::string> argv{"moshi-ttt", "collectives"};
    for (const auto& s : o->sizes) argv.insert(argv.end(), {"--sizes", s});
    for (const auto& s : o->dtypes) argv.insert(argv.end(), {"--dtypes", s});
    for (const auto& s : o->ops) argv.insert(argv.end(), {"--ops", s});
    argv.insert(argv.end(), {"--iters", std::to_string(o->iters), "--device", o->device});
    if (!o->json.empty()) argv.insert(argv.end(), {"--json", o->json});
    return run_collectives(*o, argv);
  });
}

}  // namespace mt::cli
