#include "serve/engine.h"

#include <algorithm>
#include <cstdio>
#include <future>

#include "util/error.h"
#include "util/runtime.h"

namespace mt::serve {

using Clock = std::chrono::steady_clock;

void StepTimes::add(double ms) {
  const int bin = static_cast<int>(std::clamp(ms / kBinMs, 0.0, static_cast<double>(kBins)));
  ++bins_[static_cast<size_t>(bin)];
  ++n_;
  max_ = std::max(max_, ms);
}

double StepTimes::percentile(double p) const {
  if (n_ == 0) return 0;
  const int64_t rank = std::min<int64_t>(n_ - 1, static_cast<int64_t>(p * static_cast<double>(n_ - 1) + 0.5));
  int64_t seen = 0;
  for (int b = 0; b <= kBins; ++b) {
    seen += bins_[static_cast<size_t>(b)];
    if (seen > rank) return b == kBins ? max_ : std::min((b + 0.5) * kBinMs, max_);
  }
  return max_;
}

Engine::Engine(std::unique_ptr<app::Duplex> duplex, EngineConfig cfg)
    : duplex_(std::move(duplex)),
      cfg_(std::move(cfg)),
      frame_size_(duplex_->frame_size()),
      sample_rate_(duplex_->sample_rate()),
      frame_s_(static_cast<double>(frame_size_) / static_cast<double>(sample_rate_)),
      slots_(static_cast<size_t>(duplex_->batch())),
      started_(Clock::now()) {
  if (!cfg_.metrics_path.empty()) {
    metrics_.open(cfg_.metrics_path, std::ios::app);
    MT_CHECK(metrics_.good(), cfg_.metrics_path, ": cannot write the metrics file");
  }
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

int64_t Engine::slot_of(int64_t id) const {
  for (size_t b = 0; b < slots_.size(); ++b)
    if (slots_[b].id == id && id >= 0) return static_cast<int64_t>(b);
  return -1;
}

std::optional<int64_t> Engine::open(const lm::SamplingConfig& s, OnReply on_reply, const std::string& peer) {
  s.validate();
  std::lock_guard<std::mutex> lock(mu_);
  auto free = std::find_if(slots_.begin(), slots_.end(), [](const Slot& x) { return x.id < 0; });
  if (free == slots_.end()) {
    ++refused_;
    return std::nullopt;
  }
  Slot& slot = *free;
  slot = Slot{};
  slot.id = next_id_++;
  slot.pending_start = true;
  slot.sampling = s;
  slot.on_reply = std::move(on_reply);
  slot.peer = peer;
  slot.opened = Clock::now();
  ++conversations_;
  log_line({{"event", "open"}, {"conversation", slot.id}, {"slot", free - slots_.begin()}, {"peer", peer}});
  cv_.notify_all();
  return slot.id;
}

void Engine::push(int64_t id, const float* pcm, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t b = slot_of(id);
  if (b < 0) return;
  Slot& s = slots_[static_cast<size_t>(b)];
  s.partial.insert(s.partial.end(), pcm, pcm + n);
  const size_t fs = static_cast<size_t>(frame_size_);
  size_t used = 0;
  for (; s.partial.size() - used >= fs; used += fs) {
    s.queue.emplace_back(std::vector<float>(s.partial.begin() + used, s.partial.begin() + used + fs), Clock::now());
    if (static_cast<int64_t>(s.queue.size()) > cfg_.max_queue_frames) {
      s.queue.pop_front();
      ++s.dropped;
    }
  }
  s.partial.erase(s.partial.begin(), s.partial.begin() + used);
  if (used) cv_.notify_all();
}

void Engine::close(int64_t id, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t b = slot_of(id);
  if (b < 0) return;
  Slot& s = slots_[static_cast<size_t>(b)];
  nlohmann::json j = slot_json(s, b);
  j["event"] = "close";
  j["why"] = why;
  log_line(j);
  s = Slot{};
  cv_.notify_all();
}

void Engine::inspect(const std::function<void(const app::Duplex&, const std::vector<int64_t>&)>& fn) {
  std::promise<void> done;
  auto fut = done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    inspections_.push_back([&] {
      std::vector<int64_t> ids;
      {
        std::lock_guard<std::mutex> l2(mu_);
        for (const auto& s : slots_) ids.push_back(s.id);
      }
      try {
        fn(*duplex_, ids);
        done.set_value();
      } catch (...) {
        done.set_exception(std::current_exception());
      }
    });
  }
  cv_.notify_all();
  fut.get();
}

bool Engine::due(Clock::time_point now, Clock::duration* wait) const {
  bool any_queued = false, all_queued = true;
  Clock::time_point oldest = Clock::time_point::max();
  for (const auto& s : slots_) {
    if (s.id < 0) continue;
    if (s.queue.empty()) {
      all_queued = false;
    } else {
      any_queued = true;
      oldest = std::min(oldest, s.queue.front().second);
    }
  }
  *wait = std::chrono::seconds(1);
  if (!any_queued) return false;
  if (all_queued) return true;
  const auto deadline =
      oldest + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(cfg_.max_wait_ms));
  if (now >= deadline) return true;
  *wait = deadline - now;
  return false;
}

void Engine::loop() {
  at::InferenceMode inference;  // thread-local: the whole frame thread runs without autograd
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!inspections_.empty()) {
      auto todo = std::move(inspections_);
      inspections_.clear();
      lock.unlock();
      for (auto& f : todo) f();
      lock.lock();
      continue;
    }
    Clock::duration wait;
    if (due(Clock::now(), &wait)) {
      try {
        step_once(lock);
      } catch (const std::exception& e) {
        // A failing step (out of memory, a device error) ends every conversation, not the server.
        std::fprintf(stderr, "error: conversation step failed, closing all conversations: %s\n",
                     error_message(e).c_str());
        if (!lock.owns_lock()) lock.lock();
        for (auto& s : slots_)
          if (s.id >= 0) s = Slot{};
      }
    } else {
      cv_.wait_for(lock, wait);
    }
  }
}

void Engine::step_once(std::unique_lock<std::mutex>& lock) {
  const int64_t B = static_cast<int64_t>(slots_.size());
  at::Tensor pcm = at::zeros({B, 1, frame_size_});
  float* in = pcm.data_ptr<float>();
  std::vector<int64_t> ids(static_cast<size_t>(B), -1);
  std::vector<std::pair<int64_t, lm::SamplingConfig>> starts;
  for (int64_t b = 0; b < B; ++b) {
    Slot& s = slots_[static_cast<size_t>(b)];
    if (s.id < 0) continue;
    if (s.pending_start) starts.emplace_back(b, s.sampling);
    s.pending_start = false;
    if (s.queue.empty()) {
      ++s.filled;  // late audio: silence stands in rather than holding the other conversations back
    } else {
      std::copy(s.queue.front().first.begin(), s.queue.front().first.end(), in + b * frame_size_);
      s.queue.pop_front();
    }
    ++s.frames;
    ids[static_cast<size_t>(b)] = s.id;
  }
  lock.unlock();
  for (const auto& [b, sampling] : starts) duplex_->start(b, sampling);
  const auto t0 = Clock::now();
  at::Tensor audio, text;
  std::vector<bool> ready;
  if (auto out = duplex_->step(pcm)) {
    audio = out->audio.to(at::kCPU, at::kFloat).contiguous();  // the step's one sync point
    text = out->text.to(at::kCPU).contiguous();
    ready = out->ready;
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const double frame_ms = 1000.0 * frame_s_;
  lock.lock();
  ++steps_;
  all_times_.add(ms);
  std::vector<std::pair<OnReply, Reply>> replies;
  for (int64_t b = 0; b < B; ++b) {
    Slot& s = slots_[static_cast<size_t>(b)];
    if (ids[static_cast<size_t>(b)] < 0 || s.id != ids[static_cast<size_t>(b)]) continue;  // closed meanwhile
    s.times.add(ms);
    if (ms > frame_ms) ++s.late;
    if (audio.defined() && ready[static_cast<size_t>(b)]) {
      const float* a = audio.data_ptr<float>() + b * frame_size_;
      replies.emplace_back(s.on_reply, Reply{std::vector<float>(a, a + frame_size_), text.data_ptr<int64_t>()[b]});
      ++s.replies;
    }
    if (cfg_.metrics_every_frames > 0 && s.frames % cfg_.metrics_every_frames == 0) {
      nlohmann::json j = slot_json(s, b);
      j["event"] = "frames";
      log_line(j);
    }
    warn_if_behind(s, b);
  }
  lock.unlock();
  for (auto& [fn, r] : replies)
    if (fn) fn(std::move(r));
  lock.lock();
}

nlohmann::json Engine::slot_json(const Slot& s, int64_t index) const {
  return {{"conversation", s.id},
          {"slot", index},
          {"peer", s.peer},
          {"seconds", std::chrono::duration<double>(Clock::now() - s.opened).count()},
          {"frames", s.frames},
          {"audio_s", static_cast<double>(s.frames) * frame_s_},
          {"replies", s.replies},
          {"p50_ms", s.times.percentile(0.5)},
          {"p99_ms", s.times.percentile(0.99)},
          {"max_ms", s.times.max()},
          {"late", s.late},
          {"filled", s.filled},
          {"dropped", s.dropped},
          {"queued", s.queue.size()},
          {"behind_s", static_cast<double>(s.queue.size()) * frame_s_},
          {"rss_mb", rss_mb()},
          {"sampling",
           {{"text_temperature", s.sampling.temp_text},
            {"text_topk", s.sampling.top_k_text},
            {"audio_temperature", s.sampling.temp},
            {"audio_topk", s.sampling.top_k},
            {"text_seed", s.sampling.seed},
            {"audio_seed", s.sampling.audio_seed ? nlohmann::json(*s.sampling.audio_seed) : nlohmann::json()},
            {"pad_mult", s.sampling.pad_mult},
            {"repetition_penalty", s.sampling.repetition_penalty},
            {"repetition_penalty_context", s.sampling.repetition_context}}}};
}

void Engine::warn_if_behind(Slot& s, int64_t index) {
  const double behind = static_cast<double>(s.queue.size()) * frame_s_;
  const auto now = Clock::now();
  if (behind < cfg_.behind_warn_s || now - s.last_warning < std::chrono::seconds(10)) return;
  s.last_warning = now;
  if (!cfg_.quiet)
    std::fprintf(stderr,
                 "warning: conversation %lld (slot %lld, %s) is %.2f s behind real time: %zu frames queued, p99 step "
                 "%.1f ms for %.0f ms of audio, %lld late, %lld dropped\n",
                 (long long)s.id, (long long)index, s.peer.c_str(), behind, s.queue.size(), s.times.percentile(0.99),
                 frame_s_ * 1000, (long long)s.late, (long long)s.dropped);
  nlohmann::json j = slot_json(s, index);
  j["event"] = "behind";
  log_line(j);
}

void Engine::log_line(const nlohmann::json& j) {
  if (!metrics_.is_open()) return;
  nlohmann::json line = j;
  line["t"] = std::chrono::duration<double>(Clock::now() - started_).count();
  metrics_ << line.dump() << "\n";
  metrics_.flush();
}

nlohmann::json Engine::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json live = nlohmann::json::array();
  for (size_t b = 0; b < slots_.size(); ++b)
    if (slots_[b].id >= 0) live.push_back(slot_json(slots_[b], static_cast<int64_t>(b)));
  return {{"max_conversations", slots_.size()},
          {"live", live.size()},
          {"conversations", live},
          {"conversations_served", conversations_},
          {"refused", refused_},
          {"frames", steps_},
          {"frame_ms", 1000.0 * frame_s_},
          {"step_ms",
           {{"p50", all_times_.percentile(0.5)}, {"p99", all_times_.percentile(0.99)}, {"max", all_times_.max()}}},
          {"uptime_s", std::chrono::duration<double>(Clock::now() - started_).count()},
          {"rss_mb", rss_mb()}};
}

}  // namespace mt::serve
