#include "dist/selftest.h"

#include <chrono>
#include <cmath>
#include <cstdlib>

#include "util/error.h"

namespace mt::dist {

const char* name(Collective c) {
  switch (c) {
    case Collective::kAllReduce: return "all_reduce";
    case Collective::kReduceScatter: return "reduce_scatter";
    case Collective::kAllGather: return "all_gather";
    case Collective::kBroadcast: return "broadcast";
  }
  return "?";
}

namespace {

// Rank r's value at element i: small integers, so that sums over up to 16 ranks are exact in bf16
// (8 significant bits) and any misplaced, dropped or doubled contribution shows as a wrong element.
at::Tensor pattern(int64_t n, int64_t offset, int64_t r, const at::TensorOptions& o) {
  at::Tensor v = at::arange(offset, offset + n, at::kInt);  // int32: 4 bytes an element, even at 256 MiB
  v.mul_(7).add_(r * 3).remainder_(16).sub_(8);
  return v.to(o);
}

at::Tensor summed(int64_t n, int64_t offset, int64_t world, const at::TensorOptions& o) {
  at::Tensor s = at::zeros({n}, at::kInt);
  for (int64_t r = 0; r < world; ++r) s += pattern(n, offset, r, at::TensorOptions().dtype(at::kInt));
  return s.to(o);
}

int64_t count_wrong(const at::Tensor& got, const at::Tensor& want) {
  return got.cpu().ne(want.cpu()).sum().item<int64_t>();
}

struct Buffers {
  at::Tensor a, b, want;  // inputs/outputs of one collective and the exact answer (this rank's view)
};

// n: all_reduce's / broadcast's length, or the per-rank part of reduce_scatter / all_gather.
Buffers prepare(Group& g, Collective op, int64_t n, const at::TensorOptions& o) {
  const int64_t per_rank = n;
  // all_reduce and broadcast take any length; the others a multiple of the world size.
  const bool any_length = op == Collective::kAllReduce || op == Collective::kBroadcast;
  const int64_t w = g.size(), r = g.rank(), total = any_length ? per_rank : per_rank * w;
  Buffers x;
  switch (op) {
    case Collective::kAllReduce:
      x.a = pattern(total, 0, r, o);
      x.want = summed(total, 0, w, o);
      break;
    case Collective::kReduceScatter:
      x.a = pattern(total, 0, r, o);   // input
      x.b = at::empty({per_rank}, o);  // output: this rank's slice of the sum
      x.want = summed(per_rank, r * per_rank, w, o);
      break;
    case Collective::kAllGather: {
      x.a = pattern(per_rank, 0, r, o);  // input
      x.b = at::empty({total}, o);       // output
      std::vector<at::Tensor> parts;
      for (int64_t q = 0; q < w; ++q) parts.push_back(pattern(per_rank, 0, q, o));
      x.want = at::cat(parts);
      break;
    }
    case Collective::kBroadcast:
      x.a = r == 0 ? pattern(total, 0, 0, o) : at::zeros({total}, o);
      x.want = pattern(total, 0, 0, o);
      break;
  }
  return x;
}

// Runs the collective once; returns the output tensor.
at::Tensor run_once(Group& g, Collective op, Buffers& x) {
  switch (op) {
    case Collective::kAllReduce: g.all_reduce(x.a).wait(); return x.a;
    case Collective::kReduceScatter: g.reduce_scatter(x.b, x.a).wait(); return x.b;
    case Collective::kAllGather: g.all_gather(x.b, x.a).wait(); return x.b;
    case Collective::kBroadcast: g.broadcast(x.a, 0).wait(); return x.a;
  }
  return {};
}

}  // namespace

std::vector<SelfTestResult> run_selftest(Group& g, const SelfTestOptions& o) {
  MT_CHECK(o.iters >= 1, "collectives: --iters must be >= 1, got ", o.iters);
  const int64_t w = g.size();
  std::vector<SelfTestResult> out;
  for (at::ScalarType dt : o.dtypes)
    for (int64_t bytes : o.sizes_bytes)
      for (Collective op : o.ops) {
        const auto opts = at::TensorOptions().dtype(dt).device(g.device());
        const int64_t elem = static_cast<int64_t>(c10::elementSize(dt));
        const bool any_length = op == Collective::kAllReduce || op == Collective::kBroadcast;
        const int64_t n = std::max<int64_t>(1, any_length ? bytes / elem : bytes / elem / w);  // see prepare()
        Buffers x = prepare(g, op, n, opts);
        SelfTestResult res{op, dt, (any_length ? n : n * w) * elem};
        res.wrong = count_wrong(run_once(g, op, x), x.want);
        g.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < o.iters; ++i) {
          run_once(g, op, x);
        }
        if (g.device().is_cuda()) g.barrier();
        const double dt_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.iters;
        std::vector<double> v(static_cast<size_t>(w) + 1, 0.0);  // wrong elements, then each rank's time
        v[0] = static_cast<double>(res.wrong);
        v[static_cast<size_t>(g.rank()) + 1] = dt_s;
        g.sum(v);
        res.wrong = static_cast<int64_t>(v[0]);
        res.seconds = *std::max_element(v.begin() + 1, v.end());
        res.algbw_gbs = static_cast<double>(res.bytes) / res.seconds / 1e9;
        const double ranks = static_cast<double>(w);
        res.busbw_gbs = res.algbw_gbs * (op == Collective::kAllReduce   ? 2 * (ranks - 1) / ranks
                                         : op == Collective::kBroadcast ? 1.0
                                                                        : (ranks - 1) / ranks);
        out.push_back(res);
      }
  return out;
}

int64_t parse_bytes(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  MT_CHECK(end != s.c_str() && std::isfinite(v) && v >= 1, "collectives: size '", s,
           "' is not a byte count like 1, 4KiB, 25MiB, 1GiB");
  const std::string unit(end);
  double mult = 1;
  if (unit == "" || unit == "B")
    mult = 1;
  else if (unit == "KiB" || unit == "K")
    mult = 1024.0;
  else if (unit == "MiB" || unit == "M")
    mult = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "kB")
    mult = 1e3;
  else if (unit == "MB")
    mult = 1e6;
  else if (unit == "GB")
    mult = 1e9;
  else
    fail("collectives: size '", s, "': unknown unit '", unit, "' (B, KiB, MiB, GiB, kB, MB, GB)");
  return static_cast<int64_t>(std::llround(v * mult));
}

}  // namespace mt::dist
