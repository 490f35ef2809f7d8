#include "train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

#include <yaml-cpp/yaml.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "lm/ttt_probes.h"
#include "report/plot.h"
#include "train/audio_data.h"
#include "train/data.h"
#include "train/loss.h"
#include "train/optim.h"
#include "util/error.h"
#include "util/peak_memory.h"
#include "util/pitfall_switch.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::train {

namespace {

using TensorMap = std::map<std::string, at::Tensor>;

// ---- helpers ----------------------------------------------------------------------------------
bool is_alpha(const std::string& name) { return name.find("gating_alpha") != std::string::npos; }

std::string now_iso() {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

std::string fmt_duration(double s) {
  char b[32];
  if (!std::isfinite(s) || s < 0) return "?";
  // Round to whole seconds (minutes) first, so that 119.6 s reads 2m00s, not 1m60s.
  const long long secs = std::llround(s);
  if (secs < 90)
    std::snprintf(b, sizeof b, "%llds", secs);
  else if (secs < 5400)
    std::snprintf(b, sizeof b, "%lldm%02llds", secs / 60, secs % 60);
  else {
    const long long mins = std::llround(s / 60);
    std::snprintf(b, sizeof b, "%lldh%02lldm", mins / 60, mins % 60);
  }
  return b;
}

// The token index for a data source: itself, or for an audio JSONL (moshi-finetune's format) the index
// of its Mimi tokens in the cache, encoding what is not cached yet.
std::string token_index(const TrainConfig& cfg, const std::string& source, const at::Device& dev, bool quiet) {
  if (!is_audio_jsonl(source)) return source;
  AudioDataConfig a;
  a.mimi_weights = cfg.model.mimi_weights;
  a.mimi_config = cfg.model.mimi_config;
  a.tokenizer = cfg.model.tokenizer;
  a.moshi_codebooks = cfg.model.lm.dep_q;
  a.user_codebooks = cfg.model.lm.n_q - cfg.model.lm.dep_q;
  a.text.frame_rate = cfg.frame_rate;
  a.text.pad = cfg.model.lm.existing_text_padding_id.value_or(3);
  a.text.in_word_pad = a.text.pad;
  a.text.epad = cfg.model.lm.existing_text_end_padding_id;
  a.device = dev.str();
  a.quiet = quiet;
  a.cache_dir = cfg.token_cache;
  a.user_stream = cfg.user_stream;
  if (a.cache_dir.empty()) a.cache_dir = mt::cache_dir("tokens");
  return prepare_audio_tokens(source, a);
}

// SIGINT / SIGTERM: the step in progress finishes, a checkpoint is written and the run stops cleanly
// (the CLI exits with 128 + the signal). A second signal gets the default action (immediate exit).
std::atomic<int> g_stop_signal{0};

void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  std::signal(sig, SIG_DFL);
}

struct StopSignals {
  struct sigaction old_int {
  }, old_term{};
  StopSignals() {
    g_stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
};

// Token ids outside the model's vocabularies would index past an embedding table (libtorch's
// "index out of range in self", naming nothing): name the file and the stream instead.
void check_token_range(const lm::LMConfig& c, const TokenBatch& b, const std::string& source) {
  const at::Tensor codes = b.codes;
  const at::Tensor text = codes.select(1, 0), audio = codes.narrow(1, 1, codes.size(1) - 1);
  const bool ok =
      ((text >= -1) & (text < c.text_card)).all().item<bool>() && ((audio >= -1) & (audio < c.card)).all().item<bool>();
  if (ok) return;
  for (int64_t i = 0; i < codes.size(0); ++i) {
    const at::Tensor t = codes[i][0], a = codes[i].narrow(0, 1, codes.size(1) - 1);
    if (!((t >= -1) & (t < c.text_card)).all().item<bool>())
      fail(source, ": file '", b.file_ids.at(static_cast<size_t>(i)), "': text ids outside [-1, ", c.text_card,
           ") (max ", t.max().item<int64_t>(), ")");
    if (!((a >= -1) & (a < c.card)).all().item<bool>())
      fail(source, ": file '", b.file_ids.at(static_cast<size_t>(i)), "': audio ids outside [-1, ", c.card, ") (max ",
           a.max().item<int64_t>(), ")");
  }
}

struct Run {
  const TrainConfig& cfg;
  const TrainOptions& opt;
  lm::LMModel model{nullptr};
  at::Device dev{at::kCPU};
  std::vector<ParamGroup> groups;
  std::vector<OneCycle> sched;
  std::unique_ptr<AdamW> optim;
  std::unique_ptr<TokenLoader> loader;
  std::vector<std::vector<nn::LayerState>> states;  // per micro-batch
  std::vector<at::Tensor> trainable;
  int64_t start_step = 0, bad_steps = 0;
  int stop_signal = 0;  // data parallel: the signal every rank agreed on in this step's exchange
  std::ofstream metrics;
  std::unique_ptr<Collective> comm;  // data parallel (world_size > 1)
  bool leader() const { return opt.dist.rank == 0; }
  void say(const std::string& s) const {
    if (leader() && !opt.quiet) std::fprintf(stderr, "%s\n", s.c_str());
  }
};

lm::LMModel build_model(const TrainConfig& cfg, const std::string& lora_path, int64_t* initialised) {
  const auto& mc = cfg.model;
  lm::LMModel m{nullptr};
  if (!mc.weights.empty()) {
    m = lm::load_lm(mc.lm, mc.weights, at::kFloat, mc.ttt, initialised, mc.lora, lora_path);
  } else {
    m = lm::LMModel(mc.lm, mc.ttt, mc.lora);
    m->init_weights(cfg.init_seed);
    if (!lora_path.empty()) m->load_overlay(lora_path);
  }
  return m;
}

bool trainable_name(const TrainConfig& cfg, const std::string& n) {
  if (cfg.full_finetuning) return true;
  if (lm::is_ttt_param(n) || lm::is_lora_param(n)) return true;
  return cfg.model.lora.enable && cfg.model.lora.ft_embed && n.find("emb") != std::string::npos;
}

// Where micro-batch mb's layer l keeps its stream states in a checkpoint.
std::string state_prefix(size_t mb, size_t l) {
  return "ttt_state.m" + std::to_string(mb) + ".l" + std::to_string(l) + ".";
}

// What each rank holds of its own: its loader position and its streams' TTT states.
TensorMap rank_state(Run& r) {
  TensorMap st;
  for (auto& [k, v] : r.loader->state()) st["loader." + k] = v.cpu().contiguous();
  for (size_t mb = 0; mb < r.states.size(); ++mb)
    for (size_t l = 0; l < r.states[mb].size(); ++l) r.states[mb][l].write(state_prefix(mb, l), st);
  return st;
}

// Called by every rank (data parallel: the ranks' own states are gathered on rank 0, which writes).
void save_checkpoint(Run& r, int64_t steps_done) {
  std::vector<std::string> others;
  if (r.comm) {
    TensorMap mine = rank_state(r);
    others = r.comm->all_gather(r.leader() ? std::string() : io::to_bytes({mine.begin(), mine.end()}));
  }
  if (!r.leader()) return;
  const TrainConfig& cfg = r.cfg;
  fs::path root = fs::path(cfg.run_dir) / "checkpoints";
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint_%06lld", (long long)steps_done);
  fs::path final_dir = root / name, tmp = root / (std::string(".tmp.") + name);
  fs::remove_all(tmp);
  fs::create_directories(tmp / "consolidated");
  const bool full = cfg.full_finetuning || !cfg.save_adapters || cfg.model.weights.empty();
  std::vector<std::pair<std::string, at::Tensor>> all, adapters;
  for (const auto& kv : r.model->named_parameters()) {
    at::Tensor t = kv.value().detach().cpu();
    all.emplace_back(kv.key(), t);
    if (trainable_name(cfg, kv.key()) && !cfg.full_finetuning) adapters.emplace_back(kv.key(), t);
  }
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"producer", "moshi-ttt train"}, {"step", std::to_string(steps_done)}};
  nlohmann::json cj = cfg.model.lm.to_json();
  cj["lora"] = cfg.model.lora.enable;
  cj["lora_rank"] = cfg.model.lora.rank;
  cj["lora_scaling"] = cfg.model.lora.scaling;
  io::atomic_write((tmp / "consolidated" / "config.json").string(), cj.dump(2) + "\n");
  if (full) io::save((tmp / "consolidated" / "consolidated.safetensors").string(), all, meta);
  if (!adapters.empty() && cfg.save_adapters)
    io::save((tmp / "consolidated" / "lora.safetensors").string(), adapters, meta);
  // model.yaml: score / generate / inspect load this checkpoint with --model consolidated/.
  {
    std::ofstream y(tmp / "consolidated" / "model.yaml");
    y << "# written by moshi-ttt train at step " << steps_done << "\nmoshi_paths:\n  config_path: config.json\n";
    if (full)
      y << "  moshi_path: consolidated.safetensors\n";
    else
      y << "  moshi_path: " << fs::absolute(cfg.model.weights).string() << "\n  lora_path: lora.safetensors\n";
    // The ttt / lora sections as the run used them (re-read from the run's config).
    YAML::Node doc = YAML::Load(cfg.yaml_text);
    for (const char* k : {"ttt", "lora"})
      if (doc[k]) {
        YAML::Node n;
        n[k] = doc[k];
        YAML::Emitter em;
        em << n;
        y << em.c_str() << "\n";
      }
  }
  // Training state: optimizer, data position, TTT states, counters. Data position and TTT states are
  // per rank: rank 0's here, the others' in rank_state_NNNNN.safetensors.
  TensorMap st = rank_state(r);
  for (auto& [k, v] : r.optim->state_dict()) st["optim." + k] = v.cpu().contiguous();
  for (size_t q = 1; q < others.size(); ++q) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "rank_state_%05zu.safetensors", q);
    io::atomic_write((tmp / fname).string(), others[q]);
  }
  st["world_size"] = nn::long_tensor({r.opt.dist.world_size});
  st["steps_done"] = nn::long_tensor({steps_done});
  st["bad_steps"] = nn::long_tensor({r.bad_steps});
  std::vector<std::pair<std::string, at::Tensor>> stv(st.begin(), st.end());
  io::save((tmp / "training_state.safetensors").string(), stv, meta);
  io::atomic_write((tmp / "config.yaml").string(), cfg.yaml_text);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  // Keep the newest num_ckpt_keep.
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("checkpoint_", 0) == 0) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (size_t i = 0; i + cfg.num_ckpt_keep < dirs.size(); ++i) fs::remove_all(dirs[i]);
  r.say(str("checkpoint: ", final_dir.string()));
}

void restore_checkpoint(Run& r, const std::string& dir) {
  io::SafeTensors f((fs::path(dir) / "training_state.safetensors").string());
  TensorMap all;
  for (const auto& t : f.tensors()) all[t.name] = f.get(t.name);
  const int64_t saved_world = all.count("world_size") ? nn::long_vector(all.at("world_size")).at(0) : 1;
  MT_CHECK(saved_world == r.opt.dist.world_size, dir, ": the checkpoint was written by ", saved_world,
           " data-parallel rank(s); resume it with the same number (--nproc ", saved_world, "), not ",
           r.opt.dist.world_size);
  if (r.opt.dist.rank > 0) {  // this rank's own loader position and TTT states
    char fname[64];
    std::snprintf(fname, sizeof fname, "rank_state_%05lld.safetensors", (long long)r.opt.dist.rank);
    io::SafeTensors rf((fs::path(dir) / fname).string());
    for (const auto& t : rf.tensors()) all[t.name] = rf.get(t.name);
  }
  TensorMap o, l;
  for (const auto& [k, v] : all) {
    if (k.rfind("optim.", 0) == 0) o[k.substr(6)] = v;
    if (k.rfind("loader.", 0) == 0) l[k.substr(7)] = v;
  }
  r.optim->load_state_dict(o);
  r.loader->restore(l);
  for (size_t mb = 0; mb < r.states.size(); ++mb)
    for (size_t li = 0; li < r.states[mb].size(); ++li) r.states[mb][li].read(state_prefix(mb, li), all, r.dev);
  r.start_step = nn::long_vector(all.at("steps_done")).at(0);
  r.bad_steps = nn::long_vector(all.at("bad_steps")).at(0);
}

// The TTT diagnostics the metrics log, from lm::ttt_report: mean |tanh α| over the hybrid units, and
// the mean ‖W − W0‖ over every unit that reports one (probes of micro-batch 0).
double mean_over_units(const std::vector<lm::TTTUnitReport>& units, double lm::TTTUnitReport::*field,
                       bool hybrid_only) {
  double s = 0;
  int64_t n = 0;
  for (const auto& u : units)
    if ((!hybrid_only || u.unit == "hybrid") && std::isfinite(u.*field)) {
      s += u.*field;
      ++n;
    }
  return n ? s / static_cast<double>(n) : NAN;
}

double evaluate(Run& r) {
  const TrainConfig& cfg = r.cfg;
  LoaderConfig lc;
  lc.batch_size = cfg.batch_size;
  lc.chunk_frames = cfg.chunk_frames();
  lc.shuffle = false;
  lc.infinite = false;
  lc.rank = r.opt.dist.rank;
  lc.world_size = r.opt.dist.world_size;
  TokenLoader ev(read_token_index(token_index(cfg, cfg.eval_data, at::Device(cfg.device), true)), lc);
  at::NoGradGuard ng;
  std::vector<nn::LayerState> st = r.model->transformer->make_layer_states(cfg.batch_size);
  LossConfig loss_cfg{cfg.first_codebook_weight_multiplier, cfg.text_padding_weight};
  double sum = 0;
  int64_t n = 0;
  TokenBatch b;
  while (n < cfg.eval_batches && ev.next(b)) {
    apply_resets(st, b.reset);
    at::Tensor codes = b.codes.to(r.dev);
    lm::LMOutput out = r.model->forward(codes, nullptr, r.model->transformer->has_addons() ? &st : nullptr);
    LossParts lp = compute_loss(r.model->cfg, out, codes, loss_cfg, false);
    const double v = lp.total.item<double>();
    if (std::isfinite(v)) {
      sum += v;
      ++n;
    }
  }
  if (r.comm) {  // every rank scored its share of the eval files
    std::vector<double> v{sum, static_cast<double>(n)};
    r.comm->all_reduce_sum(v);
    sum = v[0];
    n = static_cast<int64_t>(v[1]);
  }
  return n ? sum / static_cast<double>(n) : NAN;
}

void write_plots(const TrainConfig& cfg) {
  std::vector<double> xs, ys, ex, ey;
  for (auto j : read_metrics(cfg.run_dir, "train"))
    if (j["loss"].is_number()) {
      xs.push_back(j["step"].get<double>());
      ys.push_back(j["loss"].get<double>());
    }
  for (auto j : read_metrics(cfg.run_dir, "eval"))
    if (j["eval_loss"].is_number()) {
      ex.push_back(j["step"].get<double>());
      ey.push_back(j["eval_loss"].get<double>());
    }
  if (xs.empty()) return;
  plot::Chart c;
  c.title = "training loss";
  c.xlabel = "step";
  c.ylabel = "loss (nats, text + audio)";
  c.series.push_back({"train", xs, ys});
  if (!ex.empty()) c.series.push_back({"eval", ex, ey, "points"});
  plot::write_png(c, (fs::path(cfg.run_dir) / "loss.png").string());
}

}  // namespace

void apply_resets(std::vector<nn::LayerState>& states, const at::Tensor& reset) {
  const at::Tensor r = reset.to(at::kCPU, at::kBool).contiguous();
  const bool* v = r.data_ptr<bool>();
  for (auto& ls : states) {
    if (ls.empty()) continue;
    for (int64_t s = 0; s < r.size(0); ++s)
      if (v[pitfall::on(7) ? 0 : s]) ls.reset_slot(s);  // tests only: row 7 decides from slot 0
  }
}

StepResult train_step(const lm::LMModelImpl& m, AdamW& opt, const std::vector<OneCycle>& sched, int64_t step,
                      const std::vector<at::Tensor>& micro_codes, std::vector<std::vector<nn::LayerState>>* states,
                      const std::vector<at::Tensor>& micro_resets, const LossConfig& lc, double max_norm,
                      const std::vector<at::Tensor>& trainable, bool want_probes,
                      const std::function<void(StepResult&)>& before_clip) {
  StepResult r;
  for (size_t g = 0; g < opt.groups().size(); ++g) {
    opt.set_lr(g, sched[g].lr_at(step));
    opt.set_beta1(g, sched[g].momentum_at(step));
    r.lr.push_back(opt.lr(g));
  }
  r.beta1 = opt.beta1(0);
  const int64_t M = static_cast<int64_t>(micro_codes.size());
  for (int64_t mb = 0; mb < M; ++mb) {
    const at::Tensor& codes = micro_codes[mb];
    std::vector<nn::LayerState>* st = states ? &(*states)[mb] : nullptr;
    if (st) {
      for (auto& ls : *st)
        if (!ls.empty()) ls.detach();  // truncated backprop through time: chunks of a file share values, not graphs
      if (!micro_resets.empty()) apply_resets(*st, micro_resets[mb]);
    }
    // Without persistent states every sequence starts afresh: a fresh state per micro-batch is the
    // same computation, and it counts the TTT updates that happened (pitfalls.md row 11).
    std::vector<nn::LayerState> fresh;
    if (!st && m.transformer->has_addons()) {
      fresh = m.transformer->make_layer_states(codes.size(0));
      st = &fresh;
    }
    std::vector<int64_t> before;
    if (st)
      for (const auto& ls : *st) before.push_back(ls.updates());
    std::vector<lm::LayerProbes> probes;
    const bool pr = want_probes && mb == 0 && m.transformer->has_addons();
    lm::LMOutput out = m.forward(codes, pr ? &probes : nullptr, st);
    LossParts lp = compute_loss(m.cfg, out, codes, lc, true);
    (lp.total / static_cast<double>(M)).backward();
    const double t = lp.text.item<double>(), a = lp.audio.item<double>();
    r.text_loss.push_back(t);
    r.audio_loss.push_back(a);
    r.text += t / static_cast<double>(M);
    r.audio += a / static_cast<double>(M);
    if (r.per_codebook.empty()) r.per_codebook.assign(lp.per_codebook.size(), 0.0);
    for (size_t k = 0; k < lp.per_codebook.size(); ++k)
      r.per_codebook[k] += lp.per_codebook[k] / static_cast<double>(M);
    r.real_tokens += lp.real_tokens;
    if (pr) r.state_change = mean_over_units(lm::ttt_report(m, probes), &lm::TTTUnitReport::state_change, false);
    if (st) {
      r.ttt_updates.resize(st->size(), 0);
      for (size_t l = 0; l < st->size(); ++l) r.ttt_updates[l] += (*st)[l].updates() - before[l];
    }
  }
  if (before_clip) before_clip(r);
  r.loss = r.text + r.audio;
  for (const auto& g : opt.groups()) {
    std::vector<at::Tensor> ps;
    for (const auto& p : g.params) ps.push_back(p.second);
    r.group_grad_norm.push_back(grad_norm(ps));
  }
  r.grad_norm = clip_grad_norm(trainable, max_norm);
  r.applied = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (r.applied) opt.step();
  opt.zero_grad();
  return r;
}

std::vector<nlohmann::json> read_metrics(const std::string& run_dir, const std::string& kind) {
  std::vector<nlohmann::json> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.value("kind", "") == kind) out.push_back(std::move(j));
  }
  return out;
}

std::string latest_checkpoint(const std::string& run_dir) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(root)) return "";
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("checkpoint_", 0) == 0 &&
        fs::exists(e.path() / "training_state.safetensors"))
      dirs.push_back(e.path());
  if (dirs.empty()) return "";
  std::sort(dirs.begin(), dirs.end());
  return dirs.back().string();
}

namespace {
TrainSummary train_impl(const TrainConfig& cfg, const TrainOptions& opt);
}

TrainSummary run_training(const TrainConfig& cfg, const TrainOptions& opt) {
  // A run that fails before its first step (bad data, bad weights) leaves no run folder behind if it
  // made one; a run folder that existed is left as it was found (its files are only replaced whole).
  const bool made_dir = opt.dist.rank == 0 && !cfg.run_dir.empty() && !fs::exists(cfg.run_dir);
  try {
    return train_impl(cfg, opt);
  } catch (...) {
    std::error_code ec;
    const fs::path m = fs::path(cfg.run_dir) / "metrics.jsonl";
    const bool no_step = !fs::exists(m, ec) || fs::file_size(m, ec) == 0;
    if (made_dir && no_step) fs::remove_all(cfg.run_dir, ec);
    throw;
  }
}

namespace {
TrainSummary train_impl(const TrainConfig& cfg, const TrainOptions& opt) {
  StopSignals stop_signals;
  Run r{cfg, opt};
  if (opt.dist.active()) {
    r.comm = std::make_unique<Collective>(opt.dist);
    r.say(str("data parallel: ", opt.dist.world_size, " ranks (rendezvous ", opt.dist.master_addr, ":",
              opt.dist.master_port, "), batch_size ", cfg.batch_size, " per rank, ",
              cfg.batch_size * opt.dist.world_size, " in all"));
  }
  set_threads(cfg.threads);
  r.dev = parse_device(cfg.device);
  const fs::path run_dir(cfg.run_dir);
  std::string resume_dir;
  if (opt.resume) {
    resume_dir = opt.resume_from.empty() ? latest_checkpoint(cfg.run_dir) : opt.resume_from;
    MT_CHECK(!resume_dir.empty(), cfg.run_dir, ": --resume: no checkpoint found under checkpoints/");
  } else if (r.leader() && fs::exists(run_dir / "metrics.jsonl")) {
    MT_CHECK(cfg.overwrite_run_dir, cfg.run_dir,
             ": run dir already holds a run (use --resume, or overwrite_run_dir: true)");
    fs::remove_all(run_dir / "checkpoints");
    fs::remove(run_dir / "metrics.jsonl");
  }
  if (r.leader()) {
    fs::create_directories(run_dir);
    io::atomic_write((run_dir / "config.yaml").string(), cfg.yaml_text);
  }

  // Model: from the checkpoint when resuming (exact parameter values), else base weights (+ init).
  int64_t initialised = 0;
  std::string lora_path;
  if (!resume_dir.empty()) {
    fs::path cons = fs::path(resume_dir) / "consolidated";
    if (fs::exists(cons / "consolidated.safetensors")) {
      TrainConfig c2 = cfg;
      c2.model.weights = (cons / "consolidated.safetensors").string();
      r.model = build_model(c2, "", &initialised);
    } else {
      r.model = build_model(cfg, (cons / "lora.safetensors").string(), &initialised);
    }
  } else {
    r.model = build_model(cfg, "", &initialised);
  }
  if (initialised) r.say(str("base checkpoint: ", initialised, " new TTT/LoRA tensors initialised"));
  const at::ScalarType pdt = cfg.param_dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  r.model->to(pdt);
  r.model->to(r.dev);
  r.model->train();
  r.model->transformer->gradient_checkpointing = cfg.gradient_checkpointing;
  if (r.model->depformer) r.model->depformer->gradient_checkpointing = cfg.gradient_checkpointing;
  if (r.comm) {
    // Replicas must start equal (same weights, same init seed): compare a fingerprint of every tensor.
    std::vector<double> fp;
    for (const auto& kv : r.model->named_parameters()) {
      at::Tensor t = kv.value().detach().to(at::kDouble);
      fp.push_back(t.sum().item<double>());
      fp.push_back(t.square().sum().item<double>());
    }
    std::string mine(reinterpret_cast<const char*>(fp.data()), fp.size() * sizeof(double));
    std::vector<std::string> all = r.comm->all_gather(mine);
    for (size_t q = 0; q < all.size(); ++q)
      MT_CHECK(all[q] == all[0], "data parallel: rank ", q, " starts from other weights than rank 0 (",
               "different checkpoints, or init seeds?)");
  }

  // Parameter groups: base (LoRA / embeddings / everything), TTT weights, gating α.
  ParamGroup base{"base", {}, cfg.optim.lr, cfg.optim.weight_decay};
  ParamGroup tw{"ttt", {}, cfg.optim.lr * cfg.model.ttt.weight_lr_multiplier, cfg.optim.weight_decay};
  ParamGroup al{"alpha", {}, cfg.optim.lr * cfg.model.ttt.alpha_lr_multiplier, cfg.alpha_weight_decay};
  for (auto& kv : r.model->named_parameters()) {
    const bool t = trainable_name(cfg, kv.key());
    kv.value().set_requires_grad(t);
    if (!t) continue;
    r.trainable.push_back(kv.value());
    if (is_alpha(kv.key()))
      al.params.emplace_back(kv.key(), kv.value());
    else if (lm::is_ttt_param(kv.key()))
      tw.params.emplace_back(kv.key(), kv.value());
    else
      base.params.emplace_back(kv.key(), kv.value());
  }
  for (auto* g : {&base, &tw, &al})
    if (!g->params.empty()) r.groups.push_back(*g);
  MT_CHECK(!r.groups.empty(), cfg.source, ": no trainable parameter");
  r.optim = std::make_unique<AdamW>(r.groups, AdamWConfig{0.9, 0.95, 1e-8});
  for (const auto& g : r.groups) {
    OneCycle oc;
    oc.max_lr = g.max_lr;
    oc.total_steps = cfg.max_steps;
    oc.pct_start = cfg.optim.pct_start;
    r.sched.push_back(oc);
    int64_t n = 0;
    for (const auto& p : g.params) n += p.second.numel();
    r.say(str("group ", g.name, ": ", g.params.size(), " tensors, ", n, " parameters, max lr ", g.max_lr,
              ", weight decay ", g.weight_decay));
  }
  r.say("schedule: OneCycle (cosine, start max/25, end start/1e4, pct_start " + str(cfg.optim.pct_start) +
        "); beta1 cycles 0.95 -> 0.85 -> 0.95 (PyTorch's cycle_momentum), overriding AdamW's 0.9");

  // Data.
  std::vector<TokenFile> files = read_token_index(token_index(cfg, cfg.train_data, r.dev, opt.quiet || !r.leader()));
  LoaderConfig lc;
  lc.batch_size = cfg.batch_size * cfg.num_microbatches;
  lc.chunk_frames = cfg.chunk_frames();
  lc.shuffle = cfg.shuffle;
  lc.seed = cfg.seed;
  lc.rank = opt.dist.rank;
  lc.world_size = opt.dist.world_size;
  r.loader = std::make_unique<TokenLoader>(files, lc);
  const bool has_ttt = r.model->transformer->has_addons();
  const bool persistent = has_ttt && cfg.model.ttt.persistent_states;
  if (has_ttt) {
    // Pitfall 11: sequences too short for TTT to update anything.
    const auto& t = cfg.model.ttt;
    if (t.variant == lm::TTTVariant::kInPlace && lc.chunk_frames < t.inplace_chunk_size && !persistent)
      r.say(str("warning: training chunks of ", lc.chunk_frames, " frames are shorter than one In-Place chunk (",
                t.inplace_chunk_size, "): without persistent states no update ever happens"));
    if (t.variant != lm::TTTVariant::kInPlace && lc.chunk_frames < 2 * t.mini_batch_size)
      r.say(str("warning: training chunks of ", lc.chunk_frames, " frames hold fewer than 2 TTT mini-batches (",
                t.mini_batch_size, " frames each)"));
    for (int64_t mb = 0; mb < cfg.num_microbatches; ++mb)
      r.states.push_back(r.model->transformer->make_layer_states(cfg.batch_size));
  }
  if (!resume_dir.empty()) {
    restore_checkpoint(r, resume_dir);
    r.say(str("resumed from ", resume_dir, " at step ", r.start_step));
  }
  if (r.leader() && !resume_dir.empty()) {
    // A run killed mid-way leaves half-written checkpoints (never renamed into place) and metrics of
    // steps after its last checkpoint, which this run does again: drop both.
    if (fs::is_directory(run_dir / "checkpoints"))
      for (const auto& e : fs::directory_iterator(run_dir / "checkpoints"))
        if (e.path().filename().string().rfind(".tmp.", 0) == 0) fs::remove_all(e.path());
    if (fs::exists(run_dir / "metrics.jsonl")) {
      std::ifstream in(run_dir / "metrics.jsonl");
      std::string kept, line;
      int64_t dropped = 0;
      while (std::getline(in, line)) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() ||
            (j.is_object() && j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > r.start_step)) {
          ++dropped;  // a torn last line, or a step this run repeats
          continue;
        }
        kept += line + "\n";
      }
      in.close();
      io::atomic_write((run_dir / "metrics.jsonl").string(), kept);
      if (dropped)
        r.say(str("metrics.jsonl: dropped ", dropped, " record(s) after step ", r.start_step, " (they are redone)"));
    }
  }
  if (r.leader()) r.metrics.open(run_dir / "metrics.jsonl", std::ios::app);

  LossConfig loss_cfg{cfg.first_codebook_weight_multiplier, cfg.text_padding_weight};
  TrainSummary sum;
  sum.run_dir = cfg.run_dir;
  const bool tty = isatty(2);
  const auto t_start = std::chrono::steady_clock::now();
  int64_t tokens_total = 0;
  std::vector<int64_t> run_updates;  // per transformer layer: TTT updates over the run (this rank)
  const int64_t end_step = opt.stop_at_step > 0 ? std::min(opt.stop_at_step, cfg.max_steps) : cfg.max_steps;
  // Data parallel: gradients and the logged losses averaged over the ranks before clipping.
  std::function<void(StepResult&)> reduce;
  if (r.comm)
    reduce = [&r](StepResult& s) {
      // Gradients: mean over ranks (each rank's loss is normalised over its own batch, as DDP does).
      std::vector<at::Tensor> grads;
      for (auto& p : r.trainable) {
        if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        grads.push_back(p.grad());
      }
      r.comm->all_reduce_mean(grads);
      // Losses (means over ranks) and the token count (a sum), in one exchange.
      std::vector<double> v{static_cast<double>(s.real_tokens), s.text, s.audio, s.state_change};
      v.insert(v.end(), s.per_codebook.begin(), s.per_codebook.end());
      v.push_back(
          static_cast<double>(g_stop_signal.load()));  // a stop requested on any rank stops all, at the same step
      r.comm->all_reduce_sum(v);
      r.stop_signal = v.back() > 0 ? (g_stop_signal.load() ? g_stop_signal.load() : SIGTERM) : 0;
      v.pop_back();
      const double w = static_cast<double>(r.comm->world_size());
      s.real_tokens = static_cast<int64_t>(v[0]);
      s.text = v[1] / w, s.audio = v[2] / w, s.state_change = v[3] / w;
      for (size_t k = 0; k < s.per_codebook.size(); ++k) s.per_codebook[k] = v[4 + k] / w;
    };
  for (int64_t step = r.start_step; step < end_step; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    PeakMemory mem(r.dev.type());  // tensors allocated during the step on the training device
    TokenBatch batch;
    MT_CHECK(r.loader->next(batch), cfg.train_data, ": no training data");
    check_token_range(r.model->cfg, batch, cfg.train_data);
    std::vector<at::Tensor> micro, resets;
    for (int64_t mb = 0; mb < cfg.num_microbatches; ++mb) {
      micro.push_back(batch.codes.narrow(0, mb * cfg.batch_size, cfg.batch_size).to(r.dev));
      resets.push_back(batch.reset.narrow(0, mb * cfg.batch_size, cfg.batch_size));
    }
    const bool log_now = (step + 1) % cfg.log_freq == 0 || step + 1 == end_step;
    StepResult sr = train_step(*r.model, *r.optim, r.sched, step, micro, persistent ? &r.states : nullptr, resets,
                               loss_cfg, cfg.max_norm, r.trainable, log_now, reduce);
    const double loss = sr.loss, text = sr.text, audio = sr.audio, norm = sr.grad_norm, change = sr.state_change;
    if (run_updates.size() < sr.ttt_updates.size()) run_updates.resize(sr.ttt_updates.size(), 0);
    for (size_t l = 0; l < sr.ttt_updates.size(); ++l) run_updates[l] += sr.ttt_updates[l];
    const bool finite = sr.applied;
    nlohmann::json gnorms = nlohmann::json::object();
    for (size_t g = 0; g < r.groups.size(); ++g) gnorms[r.groups[g].name] = sr.group_grad_norm[g];
    if (!finite) {
      ++r.bad_steps;
      ++sum.skipped_steps;
      // States may hold the non-finite values that caused this: start the streams afresh.
      for (auto& v : r.states)
        for (auto& ls : v)
          if (!ls.empty()) ls.reset();
      r.say(str("step ", step + 1, ": non-finite ", std::isfinite(loss) ? "gradient" : "loss", " (loss ", loss,
                ", grad norm ", norm, "): step skipped (", r.bad_steps, " of at most ", cfg.max_bad_steps, ")"));
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Frames (each carries K tokens) of the step, over all ranks.
    const int64_t tokens = batch.codes.size(0) * batch.codes.size(2) * opt.dist.world_size;
    tokens_total += tokens;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const int64_t done = step + 1 - r.start_step, left = end_step - step - 1;
    const double eta = elapsed / static_cast<double>(done) * static_cast<double>(left);
    sum.last_loss = loss;
    sum.steps_done = step + 1;
    sum.tokens_per_s = static_cast<double>(tokens_total) / elapsed;
    if (r.leader() && (log_now || !finite)) {
      nlohmann::json j;
      j["kind"] = "train";
      j["step"] = step + 1;
      auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
      j["loss"] = num(loss);
      j["text_loss"] = num(text);
      j["audio_loss"] = num(audio);
      j["per_codebook"] = sr.per_codebook;
      nlohmann::json lrs = nlohmann::json::object();
      for (size_t g = 0; g < r.groups.size(); ++g) lrs[r.groups[g].name] = r.optim->lr(g);
      j["lr"] = lrs;
      j["beta1"] = r.optim->beta1(0);
      j["grad_norm"] = num(norm);
      j["grad_norm_groups"] = gnorms;
      j["skipped"] = !finite;
      if (has_ttt) {
        j["alpha_mean_abs_tanh"] = num(mean_over_units(lm::ttt_report(*r.model, {}), &lm::TTTUnitReport::gate, true));
        j["ttt_state_change"] = num(change);
      }
      j["real_tokens"] = sr.real_tokens;
      j["frames_per_s"] = static_cast<double>(tokens) / dt;
      j["tokens_per_s"] = static_cast<double>(tokens * r.model->cfg.num_codebooks()) / dt;
      j["peak_mem_mb"] = static_cast<double>(mem.peak()) / 1e6;
      j["at"] = now_iso();
      r.metrics << j.dump() << "\n";
      r.metrics.flush();
      if (!opt.quiet) {
        char line[256];
        const int width = 24, filled = static_cast<int>(width * (step + 1) / std::max<int64_t>(1, end_step));
        std::string bar(filled, '#');
        bar.resize(width, '.');
        std::snprintf(line, sizeof line, "[%s] step %lld/%lld  loss %.4f  lr %.2e  %.0f frames/s  ETA %s", bar.c_str(),
                      (long long)(step + 1), (long long)end_step, loss, r.optim->lr(0),
                      static_cast<double>(tokens) / dt, fmt_duration(eta).c_str());
        if (tty)
          std::fprintf(stderr, "\r%s\033[K%s", line, step + 1 == end_step ? "\n" : "");
        else
          std::fprintf(stderr, "%s\n", line);
      }
    }
    MT_CHECK(r.bad_steps <= cfg.max_bad_steps, "training stopped: ", r.bad_steps,
             " steps had a non-finite loss or gradient (", "max_bad_steps ", cfg.max_bad_steps, "); the last at step ",
             step + 1, ". Lower optim.lr or ttt.base_lr, or check the data");
    const bool last = step + 1 == end_step;
    if (cfg.do_eval && ((cfg.eval_freq > 0 && (step + 1) % cfg.eval_freq == 0) || step + 1 == cfg.max_steps)) {
      r.model->eval();
      const double ev = evaluate(r);
      r.model->train();
      sum.last_eval_loss = ev;
      if (r.leader()) {
        nlohmann::json j;
        j["kind"] = "eval";
        j["step"] = step + 1;
        j["eval_loss"] = std::isfinite(ev) ? nlohmann::json(ev) : nlohmann::json(nullptr);
        j["perplexity"] = std::isfinite(ev) ? nlohmann::json(std::exp(ev)) : nlohmann::json(nullptr);
        j["at"] = now_iso();
        r.metrics << j.dump() << "\n";
        r.metrics.flush();
        r.say(str("eval at step ", step + 1, ": loss ", ev));
      }
    }
    const bool saved = cfg.do_ckpt && ((cfg.ckpt_freq > 0 && (step + 1) % cfg.ckpt_freq == 0) || last);
    if (saved) save_checkpoint(r, step + 1);
    const int sig = r.comm ? r.stop_signal : g_stop_signal.load();
    if (sig && !last) {
      if (!saved) save_checkpoint(r, step + 1);
      r.say(str("stopped by ", sig == SIGINT ? "SIGINT" : "SIGTERM", " after step ", step + 1,
                "; continue with --resume"));
      sum.stopped_by_signal = sig;
      break;
    }
  }
  // Pitfalls.md row 11: how many TTT updates each layer made, so a run whose sequences were too short
  // to update anything says so instead of looking like TTT.
  if (has_ttt) {
    const auto& layers = r.model->transformer->layer_ptrs;
    std::string line;
    nlohmann::json per = nlohmann::json::object();
    for (size_t l = 0; l < layers.size(); ++l) {
      if (!lm::has_ttt(*layers[l])) continue;
      const int64_t n = l < run_updates.size() ? run_updates[l] : 0;
      sum.ttt_updates.push_back({static_cast<int64_t>(l), n});
      per[std::to_string(l)] = n;
      line += str(line.empty() ? "" : ", ", l, ": ", n);
    }
    const std::string unit = cfg.model.ttt.variant == lm::TTTVariant::kInPlace ? "chunk" : "mini-batch";
    r.say(str("TTT updates per layer (", unit, " updates over all sequences of this rank): ", line));
    for (const auto& [l, n] : sum.ttt_updates)
      if (n == 0 && sum.steps_done > r.start_step)
        r.say(str("warning: TTT layer ", l, " made no update in this run: every token used the initial TTT weights"));
    if (cfg.model.ttt.variant == lm::TTTVariant::kInPlace && cfg.model.ttt.inplace_delta_clip_fro_norm > 0)
      r.say(str("In-Place ΔW clip on: each chunk update scaled to Frobenius norm <= ",
                cfg.model.ttt.inplace_delta_clip_fro_norm));
    if (r.leader()) {
      nlohmann::json j;
      j["kind"] = "summary";
      j["step"] = sum.steps_done;
      j["ttt_updates"] = per;
      j["ttt_update_unit"] = unit;
      if (cfg.model.ttt.variant == lm::TTTVariant::kInPlace)
        j["inplace_delta_clip_fro_norm"] = cfg.model.ttt.inplace_delta_clip_fro_norm;
      j["at"] = now_iso();
      r.metrics << j.dump() << "\n";
    }
  }
  if (r.leader()) {
    r.metrics.close();
    write_plots(cfg);
  }
  return sum;
}
}  // namespace

}  // namespace mt::train
