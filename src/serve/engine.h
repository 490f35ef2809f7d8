#pragma once
// Several live conversations on one model: each takes a batch slot of one app::Duplex (the library's
// full-duplex loop, the one `generate --user` runs), and one thread steps the whole batch every 80 ms
// frame. Connecting restarts that slot only (KV ring, TTT state, Mimi state, delays); TTT state then
// persists for the whole conversation.
//
// When the batch steps: as soon as every conversation has a frame of the user's audio queued, so a
// conversation's frames go through the model exactly as they came (its reply equals a run alone);
// a conversation whose audio is late by more than `max_wait_ms` gets a frame of silence instead of
// holding the others back (counted as `filled`). Nothing is dropped silently: a step slower than real
// time counts as `late` for every conversation in it, queued frames beyond `max_queue_frames` are
// dropped oldest first and counted, and a conversation that falls behind real time gets a warning line.
#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "app/duplex.h"

namespace mt::serve {

struct EngineConfig {
  double max_wait_ms = 80;             // how long a queued frame waits for the other conversations' frames
  int64_t max_queue_frames = 50;       // 4 s of audio: beyond it the oldest frames are dropped (counted)
  double behind_warn_s = 0.5;          // warn when a conversation's queue holds this much audio
  std::string metrics_path;            // metrics.jsonl (empty: none)
  int64_t metrics_every_frames = 125;  // one line per conversation every 10 s of audio
  bool quiet = false;                  // no warning lines on stderr
};

// One frame of Moshi's reply to one conversation.
struct Reply {
  std::vector<float> pcm;  // frame_size samples at the codec's rate
  int64_t text = -1;       // text token id (padding included)
};

// Frame times in a fixed histogram (0.1 ms bins up to 2 s): percentiles over an hour-long
// conversation without memory that grows with it.
class StepTimes {
 public:
  void add(double ms);
  double percentile(double p) const;
  double max() const { return max_; }
  int64_t count() const { return n_; }

 private:
  static constexpr int kBins = 20000;
  static constexpr double kBinMs = 0.1;
  std::vector<int32_t> bins_ = std::vector<int32_t>(kBins + 1, 0);
  int64_t n_ = 0;
  double max_ = 0;
};

class Engine {
 public:
  using OnReply = std::function<void(Reply&&)>;
  // `duplex` has one slot per conversation the server can hold. Starts the frame thread.
  Engine(std::unique_ptr<app::Duplex> duplex, EngineConfig cfg);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // A new conversation in a free slot, sampled with `s`; nullopt when every slot is taken. `on_reply`
  // runs on the frame thread: it must hand the reply over and return (no blocking I/O).
  std::optional<int64_t> open(const lm::SamplingConfig& s, OnReply on_reply, const std::string& peer);
  // The user's audio for conversation `id` (any number of samples at the codec's rate).
  void push(int64_t id, const float* pcm, size_t n);
  // Ends the conversation (its slot is free for the next one). Unknown ids are ignored.
  void close(int64_t id, const std::string& why = "closed");
  // Runs `fn` on the frame thread between two steps with the Duplex (tests read a slot's state).
  void inspect(const std::function<void(const app::Duplex&, const std::vector<int64_t>& slot_of_id)>& fn);
  // Conversations, frames, latencies (GET /api/status).
  nlohmann::json status() const;
  int64_t capacity() const { return static_cast<int64_t>(slots_.size()); }
  int64_t frame_size() const { return frame_size_; }
  int64_t sample_rate() const { return sample_rate_; }
  const lm::LMConfig& lm_config() const { return duplex_->model()->cfg; }
  // Slot of a live conversation, -1 when it is not live.
  int64_t slot_of(int64_t id) const;

 private:
  struct Slot {
    int64_t id = -1;  // live conversation, -1 when free
    bool pending_start = false;
    lm::SamplingConfig sampling;
    OnReply on_reply;
    std::string peer;
    std::vector<float> partial;  // samples of the next frame so far
    std::deque<std::pair<std::vector<float>, std::chrono::steady_clock::time_point>> queue;
    // Statistics of the live conversation.
    std::chrono::steady_clock::time_point opened;
    int64_t frames = 0, replies = 0, late = 0, filled = 0, dropped = 0;
    StepTimes times;
    std::chrono::steady_clock::time_point last_warning;
  };
  void loop();
  // Under the lock: whether the batch steps now; else how long to wait.
  bool due(std::chrono::steady_clock::time_point now, std::chrono::steady_clock::duration* wait) const;
  void step_once(std::unique_lock<std::mutex>& lock);
  nlohmann::json slot_json(const Slot& s, int64_t index) const;
  void log_line(const nlohmann::json& j);
  void warn_if_behind(Slot& s, int64_t index);

  std::unique_ptr<app::Duplex> duplex_;
  EngineConfig cfg_;
  int64_t frame_size_, sample_rate_;
  double frame_s_;  // seconds of audio per frame
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  std::vector<std::function<void()>> inspections_;
  int64_t next_id_ = 1, steps_ = 0, conversations_ = 0, refused_ = 0;
  StepTimes all_times_;
  std::chrono::steady_clock::time_point started_;
  std::ofstream metrics_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace mt::serve
