// Live conversations on CUDA: per-slot sampling (each conversation's own CUDA generators), slot
// restarts and the engine's frame loop give a conversation the replies the batch-1 loop gives.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "app/duplex.h"
#include "lm/model_config.h"
#include "mimi/mimi.h"
#include "serve/engine.h"
#include "test_util.h"

using namespace mt;

namespace {
std::unique_ptr<app::Duplex> cuda_duplex(int64_t batch) {
  lm::LMModel m = lm::build_model(lm::ModelConfigFile::load(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml"),
                                  0, at::kFloat);
  m->to(at::kCUDA);
  const std::string d = test::reference_dir() + "/mimi/mimi_small";
  return std::make_unique<app::Duplex>(m, mimi::load_mimi(d + "/model.safetensors", d + "/config.json"),
                                       lm::SamplingConfig{}, batch, "mimi_small");
}
lm::SamplingConfig seeded(uint64_t s) {
  lm::SamplingConfig c;
  c.seed = s;
  c.audio_seed = s + 7;
  c.pad_mult = 0.5;
  c.repetition_penalty = 1.2;
  c.repetition_context = 16;
  return c;
}
}  // namespace

TEST(ServeGpu, AConversationOnABusyCudaBatchRepliesAsAlone) {
  REQUIRE_CUDA();
  const int64_t F = 24;
  at::Tensor user = 0.3 * at::sin(at::arange(2 * F * 1920, at::kFloat) * 0.05);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<serve::Reply> got;
  serve::EngineConfig ec;
  ec.max_wait_ms = 20000;
  ec.quiet = true;
  serve::Engine engine(cuda_duplex(3), ec);
  auto other = engine.open(
      seeded(5), [](serve::Reply&&) {}, "other");
  auto me = engine.open(
      seeded(9),
      [&](serve::Reply&& r) {
        std::lock_guard<std::mutex> l(mu);
        got.push_back(std::move(r));
        cv.notify_all();
      },
      "me");
  ASSERT_TRUE(other && me);
  const float* u = user.data_ptr<float>();
  engine.push(*other, u + F * 1920, F * 1920);
  engine.push(*me, u, F * 1920);
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(120), [&] { return got.size() >= F - 1; }));
  }
  auto alone = cuda_duplex(1);
  alone->start(0, seeded(9));
  at::InferenceMode im;
  size_t n = 0;
  for (int64_t f = 0; f < F; ++f) {
    auto out = alone->step(user.narrow(0, f * 1920, 1920).view({1, 1, 1920}));
    if (!out || !out->ready[0]) continue;
    ASSERT_LT(n, got.size());
    EXPECT_EQ(out->text[0].item<int64_t>(), got[n].text) << f;
    at::Tensor mine = at::from_blob(got[n].pcm.data(), {1920}, at::kFloat);
    EXPECT_LT((out->audio.view({1920}).cpu() - mine).abs().max().item<double>(), 1e-3) << f;
    ++n;
  }
  EXPECT_EQ(n, got.size());
}
