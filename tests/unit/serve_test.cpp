// The live-conversation server's library side: Kyutai's query string and message kinds, the engine
// that batches conversations in Duplex slots (independence, disconnects, TTT persistence against the
// `generate --user` loop, late and dropped frames counted).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "app/duplex.h"
#include "lm/model_config.h"
#include "mimi/mimi.h"
#include "serve/engine.h"
#include "serve/protocol.h"
#include "test_util.h"

using namespace mt;
using namespace mt::serve;

TEST(ServeProtocol, QueryStringsDecodeAndSamplingFollowsKyutaisRustServer) {
  auto q = parse_query("text_temperature=0.5&text_topk=10&email=a%40b.c&name=x+y&flag&&empty=");
  EXPECT_EQ(q.at("email"), "a@b.c");
  EXPECT_EQ(q.at("name"), "x y");
  EXPECT_EQ(q.at("flag"), "");
  EXPECT_EQ(q.at("empty"), "");
  EXPECT_THROW(parse_query("a=%4"), Error);
  EXPECT_THROW(parse_query("a=%zz"), Error);

  lm::SamplingConfig base;
  base.temp = 0.8;
  base.top_k = 250;
  lm::SamplingConfig s = session_sampling(q, base, 1234);
  EXPECT_DOUBLE_EQ(s.temp_text, 0.5);
  EXPECT_EQ(s.top_k_text, 10);
  EXPECT_DOUBLE_EQ(s.temp, 0.8);  // not in the query: the server's default
  EXPECT_EQ(s.seed, 1234u);       // no text_seed: a fresh one per conversation
  EXPECT_FALSE(s.audio_seed.has_value());
  EXPECT_FALSE(s.penalizes());

  s = session_sampling(parse_query("text_seed=5&audio_seed=6&pad_mult=-1.5&repetition_penalty=1.3&"
                                   "repetition_penalty_context=64&audio_topk=7&audio_temperature=0"),
                       base, 1);
  EXPECT_EQ(s.seed, 5u);
  EXPECT_EQ(s.audio_seed.value_or(0), 6u);
  EXPECT_DOUBLE_EQ(s.pad_mult, -1.5);
  EXPECT_TRUE(s.penalizes());
  EXPECT_EQ(s.repetition_context, 64);
  EXPECT_EQ(s.top_k, 7);
  EXPECT_DOUBLE_EQ(s.temp, 0.0);
  // The penalty needs both of its parameters, as in the Rust server.
  EXPECT_FALSE(session_sampling(parse_query("repetition_penalty=1.3"), base, 1).penalizes());
  // A bad value names its parameter.
  for (const char* bad : {"text_topk=-3", "text_temperature=abc", "audio_seed=1e3", "pad_mult=nan",
                          "text_temperature=-1", "repetition_penalty=0&repetition_penalty_context=3"}) {
    try {
      session_sampling(parse_query(bad), base, 1);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      const std::string key = std::string(bad).substr(0, std::string(bad).find('='));
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(message(MsgKind::kError, "x"), std::string("\x05x"));
  EXPECT_EQ(message(MsgKind::kHandshake), std::string(1, '\0'));
  nlohmann::json meta = session_metadata(s, "m", "i");
  EXPECT_EQ(meta.at("audio_topk"), 7);
  EXPECT_EQ(meta.at("lm_model_file"), "m");
  EXPECT_EQ(meta.at("build_info").size(), 10u);  // the web client's schema: all ten, strings
  for (const auto& [k, v] : meta.at("build_info").items()) EXPECT_TRUE(v.is_string()) << k;
  EXPECT_NE(meta.at("build_info").at("git_describe").get<std::string>().find("moshi-ttt"), std::string::npos);
}

TEST(ServeProtocol, TextPiecesSkipPaddingAndTheStartToken) {
  lm::LMConfig c = lm::preset_config("tiny");
  TextPieces p(c, nullptr);
  EXPECT_EQ(p.next(*c.existing_text_padding_id), "");
  EXPECT_EQ(p.next(c.existing_text_end_padding_id), "");
  EXPECT_EQ(p.next(c.initial_text_token()), "");
  EXPECT_EQ(p.next(-2), "");
  EXPECT_EQ(p.next(17), " 17");
}

TEST(ServeEngine, StepTimePercentilesFromTheHistogram) {
  StepTimes t;
  for (int i = 1; i <= 100; ++i) t.add(i);
  EXPECT_NEAR(t.percentile(0.5), 50.5, 1.0);
  EXPECT_NEAR(t.percentile(0.99), 99.5, 1.0);
  EXPECT_DOUBLE_EQ(t.max(), 100);
  EXPECT_EQ(t.count(), 100);
  t.add(5000);  // beyond the histogram: the max still says it
  EXPECT_DOUBLE_EQ(t.max(), 5000);
  EXPECT_DOUBLE_EQ(t.percentile(1.0), 5000);
}

namespace {

lm::LMModel tiny_ttt_model() {
  return lm::build_model(lm::ModelConfigFile::load(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml"), 0,
                         at::kFloat);
}

mimi::Mimi small_mimi() {
  const std::string d = test::reference_dir() + "/mimi/mimi_small";
  return mimi::load_mimi(d + "/model.safetensors", d + "/config.json");
}

std::unique_ptr<app::Duplex> duplex(int64_t batch) {
  lm::SamplingConfig s;
  return std::make_unique<app::Duplex>(tiny_ttt_model(), small_mimi(), s, batch, "mimi_small");
}

// A conversation's user audio: a tone of its own pitch with a little noise, [frames * 1920].
std::vector<float> user_audio(int64_t frames, double hz, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor t = at::arange(frames * 1920, at::kFloat) / 24000.0;
  at::Tensor x = 0.3 * at::sin(2 * M_PI * hz * t) + 0.02 * at::randn({frames * 1920}, g);
  return std::vector<float>(x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
}

// Replies per conversation, filled from the frame thread.
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int64_t, std::vector<Reply>> got;
  Engine::OnReply sink(int64_t key, std::function<void(size_t)> also = {}) {
    return [this, key, also](Reply&& r) {
      size_t n;
      {
        std::lock_guard<std::mutex> l(mu);
        got[key].push_back(std::move(r));
        n = got[key].size();
      }
      cv.notify_all();
      if (also) also(n);
    };
  }
  void wait_for(int64_t key, size_t n) {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(120), [&] { return got[key].size() >= n; }))
        << "conversation " << key << ": " << got[key].size() << " of " << n << " replies";
  }
};

lm::SamplingConfig seeded(uint64_t seed) {
  lm::SamplingConfig s;
  s.seed = seed;
  s.audio_seed = seed + 1000;
  return s;
}

EngineConfig patient() {
  EngineConfig c;
  c.max_wait_ms = 20000;  // lockstep only: every frame goes through as it came
  c.quiet = true;
  return c;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = a.size() == b.size() ? 0 : 1e9;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

}  // namespace

// Four conversations on one batch; conversation 2 hangs up after 10 replies. The other three get
// exactly the replies they get when nobody hangs up, and a fifth caller is refused while all four
// slots are taken.
TEST(ServeEngine, ADisconnectDoesNotDisturbTheOtherConversations) {
  const int64_t F = 30;
  auto run = [&](bool hang_up) {
    Inbox inbox;
    Engine engine(duplex(4), patient());
    std::vector<int64_t> ids;
    for (int64_t k = 0; k < 4; ++k) {
      auto also = [&engine, &ids, k, hang_up](size_t n) {
        if (hang_up && k == 2 && n == 10) engine.close(ids[2], "hung up");
      };
      auto id = engine.open(seeded(10 + k), inbox.sink(k, also), "test");
      EXPECT_TRUE(id.has_value());
      ids.push_back(id.value_or(-1));
    }
    EXPECT_FALSE(engine.open(seeded(99), inbox.sink(9), "fifth").has_value());
    EXPECT_EQ(engine.status().at("refused"), 1);
    for (int64_t k = 0; k < 4; ++k) {
      auto pcm = user_audio(F, 150 + 60 * k, k);
      engine.push(ids[k], pcm.data(), pcm.size());
    }
    for (int64_t k : {0, 1, 3}) inbox.wait_for(k, F - 1);  // the tiny LM's delay holds back one frame
    std::lock_guard<std::mutex> l(inbox.mu);
    return inbox.got;
  };
  auto with = run(true), without = run(false);
  EXPECT_EQ(with[2].size(), 10u);
  EXPECT_EQ(without[2].size(), static_cast<size_t>(F - 1));
  for (int64_t k : {0, 1, 3}) {
    ASSERT_EQ(with[k].size(), without[k].size()) << k;
    for (size_t f = 0; f < with[k].size(); ++f) {
      EXPECT_EQ(with[k][f].text, without[k][f].text) << "conversation " << k << " frame " << f;
      EXPECT_LT(max_abs_diff(with[k][f].pcm, without[k][f].pcm), 1e-7) << "conversation " << k << " frame " << f;
    }
  }
  // The test can fail: different conversations do not reply alike.
  double apart = 0;
  for (size_t f = 0; f < without[0].size(); ++f)
    apart = std::max(apart, max_abs_diff(without[0][f].pcm, without[1][f].pcm));
  EXPECT_GT(apart, 1e-5);
}

// A conversation that joins a busy server (its slot's TTT state at another mini-batch phase than the
// others') ends up, after N frames, with the TTT state and the replies that the `generate --user`
// loop (Duplex, batch 1) gives on the same audio.
TEST(ServeEngine, TTTStatePersistsAsInTheGenerateLoop) {
  const int64_t N = 20, early = 7;
  Inbox inbox;
  Engine engine(duplex(4), patient());
  auto a = engine.open(seeded(1), inbox.sink(0), "a"), b = engine.open(seeded(2), inbox.sink(1), "b");
  ASSERT_TRUE(a && b);
  auto pa = user_audio(early + N, 200, 1), pb = user_audio(early + N, 300, 2);
  engine.push(*a, pa.data(), early * 1920);
  engine.push(*b, pb.data(), early * 1920);
  inbox.wait_for(0, early - 1);
  // Slot 2 has been stepping idle all along: joining restarts it.
  auto x = engine.open(seeded(3), inbox.sink(2), "x");
  auto y = engine.open(seeded(4), inbox.sink(3), "y");
  ASSERT_TRUE(x && y);
  engine.close(*y, "gone before speaking");  // a slot that is opened and closed at once is harmless
  auto px = user_audio(N, 250, 3);
  engine.push(*a, pa.data() + early * 1920, N * 1920);
  engine.push(*b, pb.data() + early * 1920, N * 1920);
  engine.push(*x, px.data(), px.size());
  inbox.wait_for(2, N - 1);
  const int64_t slot = engine.slot_of(*x);
  ASSERT_GE(slot, 0);
  nn::TensorMap served;
  engine.inspect([&](const app::Duplex& d, const std::vector<int64_t>&) { d.lm_state().main.write("", served); });

  // The same conversation alone, through the generate --user loop.
  auto alone = duplex(1);
  alone->start(0, seeded(3));
  std::vector<Reply> ref;
  for (int64_t f = 0; f < N; ++f) {
    at::Tensor frame = at::from_blob(px.data() + f * 1920, {1, 1, 1920}, at::kFloat).clone();
    if (auto out = alone->step(frame); out && out->ready[0]) {
      at::Tensor pcm = out->audio.contiguous();
      ref.push_back(
          Reply{std::vector<float>(pcm.data_ptr<float>(), pcm.data_ptr<float>() + 1920), out->text[0].item<int64_t>()});
    }
  }
  nn::TensorMap single;
  alone->lm_state().main.write("", single);

  int64_t compared = 0;
  for (const auto& [key, t1] : single) {
    const bool ttt = key.find("W1b") != std::string::npos || key.find("G1b") != std::string::npos ||
                     key.find("position") != std::string::npos;
    if (!ttt) continue;
    const at::Tensor& tb = served.at(key);
    at::Tensor row = tb.narrow(0, slot, 1);
    EXPECT_TRUE(at::allclose(row.to(at::kDouble), t1.to(at::kDouble), 1e-4, 1e-5)) << key;
    ++compared;
  }
  EXPECT_GE(compared, 3) << "no TTT state found in the LM's streaming state";
  std::lock_guard<std::mutex> l(inbox.mu);
  ASSERT_EQ(inbox.got[2].size(), ref.size());
  for (size_t f = 0; f < ref.size(); ++f) {
    EXPECT_EQ(inbox.got[2][f].text, ref[f].text) << f;
    EXPECT_LT(max_abs_diff(inbox.got[2][f].pcm, ref[f].pcm), 1e-3) << f;
  }
}

// Audio that does not come is not waited for forever, and audio that piles up is not kept forever:
// both are counted where a person looks (status, metrics).
TEST(ServeEngine, LateAndDroppedFramesAreCounted) {
  EngineConfig c;
  c.max_wait_ms = 30;
  c.max_queue_frames = 5;
  c.quiet = true;
  Inbox inbox;
  Engine engine(duplex(2), c);
  auto a = engine.open(seeded(1), inbox.sink(0), "a");
  ASSERT_TRUE(a);
  auto pa = user_audio(5, 200, 1);
  engine.push(*a, pa.data(), pa.size());
  inbox.wait_for(0, 4);
  // A second conversation that sends nothing: a's frames go on after max_wait with silence for b.
  auto b = engine.open(seeded(2), inbox.sink(1), "b");
  ASSERT_TRUE(b);
  engine.push(*a, pa.data(), 3 * 1920);
  inbox.wait_for(0, 7);
  nlohmann::json st = engine.status();
  ASSERT_EQ(st.at("live"), 2);
  int64_t filled_b = -1;
  for (const auto& conv : st.at("conversations"))
    if (conv.at("conversation") == *b) filled_b = conv.at("filled");
  EXPECT_EQ(filled_b, 3);
  engine.close(*b);
  // Now a lone conversation whose engine is held up: 9 frames arrive, 5 fit the queue.
  engine.inspect([&](const app::Duplex&, const std::vector<int64_t>&) {
    auto burst = user_audio(9, 220, 3);
    engine.push(*a, burst.data(), burst.size());
  });
  inbox.wait_for(0, 12);
  st = engine.status();
  EXPECT_EQ(st.at("conversations")[0].at("dropped"), 4);
  EXPECT_EQ(st.at("conversations")[0].at("frames"), 5 + 3 + 5);
  EXPECT_EQ(st.at("conversations")[0].at("filled"), 0);
}
