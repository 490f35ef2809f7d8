// Long streams (issue 8): one hour of audio (45,000 frames at 12.5 Hz) of streaming generation and of
// streaming scoring with a tiny hybrid-TTT model keeps memory flat: nothing may grow with the
// conversation except the output itself (KV rings are bounded, TTT states are fixed-size).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_util.h"

using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

TEST(LongStream, OneHourOfGenerationAndScoringKeepsMemoryFlat) {
  TempDir d;
  const std::string model = " --config " + std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml --threads 1";
  std::string out;
  ASSERT_EQ(run(cli() + " generate --quiet --steps 45000 --run-dir " + d.file("gen") + model, &out), 0) << out;
  std::ifstream in(d.file("gen/summary.json"));
  const auto s = nlohmann::json::parse(in);
  const double start = s["rss_mb_after_warmup"].get<double>(), end = s["rss_mb_end"].get<double>();
  // The generated tokens (5 x 45,000 int64 = 1.8 MB) and the per-step latencies (0.36 MB) are the only
  // things allowed to grow; measured +1.5 MB. A tensor kept per step would add ~20 MB.
  std::printf("RSS generating one hour: %.2f MB after warm-up, %+.2f MB at the end\n", start, end - start);
  EXPECT_LT(end - start, 6.0) << "RSS " << start << " -> " << end << " MB over one hour of streaming";

  // Scoring the same length, streamed in chunks with the TTT state carried.
  at::Generator g = at::detail::createCPUGenerator(1);
  at::Tensor codes = at::randint(64, {5, 45000}, g, at::kLong);
  mt::io::save(d.file("long.safetensors"), std::vector<std::pair<std::string, at::Tensor>>{{"codes", codes}});
  ASSERT_EQ(run(cli() + " eval long-context --quiet --bootstrap 20 --chunk 32 --data " + d.file("long.safetensors") +
                    " --out " + d.file("run") + model,
                &out),
            0)
      << out;
  std::ifstream sj(d.file("run/eval/long_context/summary.json"));
  const auto l = nlohmann::json::parse(sj);
  // While streaming, from a tenth of the file to its last chunk: the loss buffer is allocated up front,
  // so nothing may grow (measured +0.3 MB); 6 MB is the bound the whole run had before the streaming
  // was measured apart, when one CI machine measured +6.2 MB to the very end.
  const double a = l["rss_mb"]["after_warmup"].get<double>(), streamed = l["rss_mb"]["after_streaming"].get<double>();
  EXPECT_LT(streamed - a, 6.0) << "RSS " << a << " -> " << streamed << " MB streaming one hour";
  // To the end of the run: the per-position losses (4 x 45,000 doubles) and their aggregation in
  // [5, 45,000] double tensors, whose freed blocks the allocator may keep (measured +1.9 MB here and
  // +6.2 MB on a CI machine); a leak per chunk shows in the bound above.
  const double b = l["rss_mb"]["end"].get<double>();
  std::printf("RSS scoring one hour: %.2f MB after warm-up, %+.2f MB at the end of streaming, %+.2f MB at the end\n", a,
              streamed - a, b - a);
  EXPECT_LT(b - a, 20.0) << "RSS " << a << " -> " << b << " MB scoring one hour";
  EXPECT_EQ(l["frames"]["max"].get<int64_t>(), 45000);
}
