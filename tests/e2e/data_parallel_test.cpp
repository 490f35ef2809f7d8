// Data parallel on c10d, end to end through the CLI (issue 25): the collectives are exact on 2 and 4
// ranks, N ranks train like one process with their joint batch (the `small` preset, whose gradients are
// far over the 8 MiB a store value may hold, and tiny hybrid TTT + LoRA), sharded optimizer state and
// gradients change nothing, a killed rank is named quickly, and torchrun launches and restarts runs.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"

namespace fs = std::filesystem;
using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

using mt::test::run_metrics;

namespace {

struct Spec {
  std::string preset = "tiny";
  int64_t text_card = 64, card = 64, streams = 5;  // the preset's vocabularies and 1 + n_q
  std::string model;                               // extra model sections (ttt:, lora:)
  bool full = true;
  double lr = 2e-4;
  int64_t steps = 5, batch = 2;
  std::string extra;  // more top-level YAML
  bool ckpt = true;   // a checkpoint every 3 steps
};

Spec small_preset() {
  Spec s;
  s.preset = "small";
  s.text_card = 32000, s.card = 2048, s.streams = 17;
  return s;
}

Spec tiny_ttt_lora() {
  Spec s;
  s.model =
      "ttt:\n  enable: true\n  variant: hybrid\n  layers: \"1\"\n  type: linear\n  mini_batch_size: 4\n"
      "lora:\n  enable: true\n  rank: 4\n  scaling: 2.0\n";
  s.full = false;
  return s;
}

// Eight files of two 20-frame chunks each, so every rank's slots move in step with one process's. No
// text padding (ids 0-3): every sample then weighs the same in the loss, and the mean of the ranks' mean
// losses (what data parallelism computes, as DDP does) is the mean over the joint batch.
std::string make_data(TempDir& d, const Spec& s) {
  const std::string name = "data_" + s.preset;
  if (fs::exists(d.file(name + "/index.jsonl"))) return d.file(name + "/index.jsonl");
  std::vector<std::pair<std::string, at::Tensor>> files;
  at::Generator g = at::detail::createCPUGenerator(5);
  for (int i = 0; i < 8; ++i) {
    at::Tensor codes = at::randint(s.card, {s.streams, 40}, g, at::kLong);
    codes.select(0, 0).random_(4, s.text_card, g);
    files.emplace_back(name + std::to_string(i), codes);
  }
  mt::train::write_token_dataset(d.file(name), files);
  return d.file(name + "/index.jsonl");
}

std::string write_config(TempDir& d, const std::string& name, const Spec& s) {
  std::ofstream f(d.file(name));
  f << "preset: " << s.preset << "\n"
    << s.model << "run_dir: " << d.file(name + ".run") << "\ndata:\n  train_data: " << make_data(d, s)
    << "\n  shuffle: true\nduration_sec: 1.6\nbatch_size: " << s.batch << "\nmax_steps: " << s.steps << "\nseed: 1\n"
    << (s.ckpt ? "ckpt_freq: 3\n" : "do_ckpt: false\n") << "optim:\n  lr: " << s.lr
    << "\n  pct_start: 0.3\nfull_finetuning: " << (s.full ? "true" : "false") << "\nparam_dtype: float32\nlog_freq: 1\n"
    << s.extra;
  return d.file(name);
}

// Starts `cmd` with /bin/sh in the background; returns its pid (the caller waits for it).
pid_t start_shell(const std::string& cmd) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    ::_exit(127);
  }
  return pid;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

// Runs `cfg` as one process with batch nproc x b, then as nproc ranks with b each; returns both logs.
std::pair<std::vector<nlohmann::json>, std::vector<nlohmann::json>> one_vs_ranks(TempDir& d, const Spec& s, int nproc,
                                                                                 const std::string& tag,
                                                                                 const std::string& sets = "") {
  const std::string one = write_config(d, tag + "_one.yaml", s), many = write_config(d, tag + "_many.yaml", s);
  std::string out;
  EXPECT_EQ(
      run(cli() + " train --quiet --config " + one + " --set batch_size=" + std::to_string(s.batch * nproc) + sets,
          &out),
      0)
      << out;
  EXPECT_EQ(run(cli() + " train --nproc " + std::to_string(nproc) + " --config " + many + sets, &out), 0) << out;
  EXPECT_NE(out.find("over c10d gloo"), std::string::npos) << out;
  return {run_metrics(d.file(tag + "_one.yaml.run")), run_metrics(d.file(tag + "_many.yaml.run"))};
}

void expect_same_losses(const std::vector<nlohmann::json>& a, const std::vector<nlohmann::json>& b, size_t steps,
                        double tol, const std::string& what) {
  ASSERT_EQ(a.size(), steps) << what;
  ASSERT_EQ(b.size(), steps) << what;
  for (size_t i = 0; i < steps; ++i) {
    EXPECT_LT(rel(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()), tol) << what << ", step " << i + 1;
    EXPECT_EQ(b[i]["real_tokens"], a[i]["real_tokens"]) << what << ", step " << i + 1;
  }
  EXPECT_LT(rel(b[0]["grad_norm"].get<double>(), a[0]["grad_norm"].get<double>()), 1e-5) << what;
  // The tolerance has to mean something: training moves the loss by far more than it over these steps
  // (a rank that skipped the exchange would follow another trajectory).
  EXPECT_GT(rel(a[steps - 1]["loss"].get<double>(), a[0]["loss"].get<double>()), 100 * tol) << what;
  for (size_t i = 0; i < steps; ++i)
    std::printf("%s step %zu: loss %.8f vs %.8f (rel %.2e)\n", what.c_str(), i + 1, b[i]["loss"].get<double>(),
                a[i]["loss"].get<double>(), rel(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()));
}

}  // namespace

// The pairing of libtorch's compiled Gloo with the Gloo headers we compile against (Debian's
// libgloo-dev): every collective exact, float32 and bf16, 1 element to 256 MiB, 2 and 4 ranks.
TEST(Collectives, ExactOnTwoAndFourRanksFromOneElementTo256MiB) {
  TempDir d;
  for (int n : {2, 4}) {
    std::string out;
    const std::string json = d.file("c" + std::to_string(n) + ".jsonl");
    ASSERT_EQ(run(cli() + " collectives --nproc " + std::to_string(n) +
                      " --sizes 4B,100B,4KiB,1MiB,25MiB,256MiB --dtypes float32,bfloat16 --iters 1 --json " + json,
                  &out),
              0)
        << out;
    std::ifstream in(json);
    int cases = 0;
    bool one_element = false;
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      ++cases;
      EXPECT_EQ(j["wrong"], 0) << line;
      EXPECT_EQ(j["ranks"], n);
      one_element |= j["collective"] == "all_reduce" && j["dtype"] == "Float" && j["bytes"] == 4;
    }
    EXPECT_EQ(cases, 2 * 6 * 4) << out;
    EXPECT_TRUE(one_element);
  }
}

// ~10^8 parameters, gradients of ~400 MB a step: the store-based exchange this replaced stopped here at
// its first exchange (the store refuses values over 8 MiB). 2 ranks of batch 1 = 1 process of batch 2.
TEST(DataParallel, SmallPresetFullFineTuneMatchesOneProcess) {
  TempDir d;
  Spec s = small_preset();
  s.batch = 1;
  auto [a, b] = one_vs_ranks(d, s, 2, "small");
  expect_same_losses(a, b, 5, 1e-5, "small, 2 ranks");
}

TEST(DataParallel, TinyHybridTTTWithLoRAMatchesOneProcessOnTwoAndFourRanks) {
  for (int n : {2, 4}) {
    TempDir d;
    Spec s = tiny_ttt_lora();
    s.batch = 1;
    auto [a, b] = one_vs_ranks(d, s, n, "ttt");
    expect_same_losses(a, b, 5, 1e-5, "tiny TTT + LoRA, " + std::to_string(n) + " ranks");
  }
}

// ZeRO-1 and ZeRO-2 hold other things, compute the same: losses and norms equal the unsharded run's.
TEST(DataParallel, ShardedEqualsUnsharded) {
  TempDir d;
  Spec s;
  s.full = true;
  s.model = tiny_ttt_lora().model.substr(0, tiny_ttt_lora().model.find("lora:"));
  const std::string c = write_config(d, "c.yaml", s);
  std::string out;
  for (const char* mode : {"none", "optimizer", "gradients"}) {
    ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + c + " --set sharding=" + mode +
                      " --set bucket_cap_mb=0.01 --set run_dir=" + d.file(std::string("run_") + mode),
                  &out),
              0)
        << mode << ": " << out;
  }
  auto none = run_metrics(d.file("run_none"));
  for (const char* mode : {"optimizer", "gradients"}) {
    auto m = run_metrics(d.file(std::string("run_") + mode));
    ASSERT_EQ(m.size(), none.size()) << mode;
    for (size_t i = 0; i < m.size(); ++i) {
      EXPECT_LT(rel(m[i]["loss"].get<double>(), none[i]["loss"].get<double>()), 1e-6) << mode << " step " << i + 1;
      EXPECT_LT(rel(m[i]["grad_norm"].get<double>(), none[i]["grad_norm"].get<double>()), 1e-5)
          << mode << " step " << i + 1;
    }
  }
}

// A sharded 2-rank run stopped at step 3 and resumed equals the uninterrupted one bit for bit; so does
// one that torchrun restarted (TORCHELASTIC_RESTART_COUNT > 0 resumes from the last checkpoint).
TEST(DataParallel, ShardedResumeAndRestartAreBitIdentical) {
  TempDir d;
  Spec s;
  s.steps = 6;
  s.extra = "sharding: gradients\nbucket_cap_mb: 0.01\n";
  const std::string a = write_config(d, "a.yaml", s), b = write_config(d, "b.yaml", s),
                    c = write_config(d, "c.yaml", s);
  std::string out;
  ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + a, &out), 0) << out;
  ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + b + " --stop-at-step 3", &out), 0) << out;
  ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + b + " --resume", &out), 0) << out;
  ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + c + " --stop-at-step 3", &out), 0) << out;
  ASSERT_EQ(run("TORCHELASTIC_RESTART_COUNT=1 " + cli() + " train --nproc 2 --config " + c, &out), 0) << out;
  EXPECT_NE(out.find("torchrun restart 1: resuming from"), std::string::npos) << out;
  EXPECT_EQ(run(cli() + " train --quiet --nproc 2 --config " + b + " --resume --set sharding=none", &out), 1) << out;
  auto ma = run_metrics(d.file("a.yaml.run"));
  for (const char* other : {"b.yaml.run", "c.yaml.run"}) {
    auto mb = run_metrics(d.file(other));
    ASSERT_EQ(ma.size(), 6u);
    ASSERT_EQ(mb.size(), 6u) << other;
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << other << i;
    mt::io::SafeTensors fa(d.file("a.yaml.run/checkpoints/checkpoint_000006/consolidated/consolidated.safetensors"));
    mt::io::SafeTensors fb(
        d.file(std::string(other) + "/checkpoints/checkpoint_000006/consolidated/consolidated.safetensors"));
    for (const auto& t : fa.tensors()) EXPECT_TRUE(at::equal(fa.get(t.name), fb.get(t.name))) << other << t.name;
  }
}

// Ranks started by hand (as on several machines): rank 1 is killed mid-run; rank 0 stops within 60 s
// with an error that names rank 1.
TEST(DataParallel, KilledRankIsNamedWithinAMinute) {
  TempDir d;
  Spec s;
  s.steps = 100000;
  s.ckpt = false;
  const std::string c = write_config(d, "c.yaml", s);
  const std::string port = std::to_string(20000 + (::getpid() * 7 % 20000));
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port;
  const std::string log0 = d.file("rank0.log");
  const pid_t r0 = start_shell(env + " RANK=0 exec " + cli() + " train --quiet --config " + c + " >" + log0 + " 2>&1");
  const pid_t r1 = start_shell(env + " RANK=1 exec " + cli() + " train --quiet --config " + c + " >/dev/null 2>&1");
  // Let both train for a while (rank 0's metrics show steps), then kill rank 1.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int status = 0;
  while (run_metrics(d.file("c.yaml.run")).size() < 3 && std::chrono::steady_clock::now() < deadline &&
         ::waitpid(r0, &status, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(run_metrics(d.file("c.yaml.run")).size(), 3u) << mt::test::slurp(log0);
  ::kill(r1, SIGKILL);
  ::waitpid(r1, nullptr, 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (::waitpid(r0, &status, WNOHANG) == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (took >= 60) {
    ::kill(r0, SIGKILL);
    ::waitpid(r0, &status, 0);
  }
  EXPECT_LT(took, 60.0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  const std::string log = mt::test::slurp(log0);
  EXPECT_NE(log.find("rank 1 stopped"), std::string::npos) << log;
}

// torchrun (from the PyTorch the build uses) runs the ranks: its agent hosts the store and the ranks
// join it; the run equals the --nproc one.
TEST(DataParallel, TorchrunLaunchesTheRanks) {
  const std::string torchrun = MT_TORCHRUN;
  ASSERT_FALSE(torchrun.empty()) << "torchrun was not found next to the build's PyTorch";
  TempDir d;
  Spec s;
  s.steps = 3;
  const std::string a = write_config(d, "a.yaml", s), b = write_config(d, "b.yaml", s);
  std::string out;
  ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + a, &out), 0) << out;
  ASSERT_EQ(run("OMP_NUM_THREADS=1 " + torchrun + " --standalone --nproc-per-node 2 --no-python " + cli() +
                    " train --config " + b,
                &out),
            0)
      << out;
  EXPECT_NE(out.find("torchrun's store"), std::string::npos) << out;
  auto ma = run_metrics(d.file("a.yaml.run")), mb = run_metrics(d.file("b.yaml.run"));
  ASSERT_EQ(ma.size(), 3u);
  ASSERT_EQ(mb.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << i;
}

namespace {

// The pid of the training process of `rank` whose command line names `config` (torchrun's workers are
// found by their RANK variable).
pid_t find_rank(int rank, const std::string& config) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd(e.path() / "cmdline"), env(e.path() / "environ");
    std::string c((std::istreambuf_iterator<char>(cmd)), {}), v((std::istreambuf_iterator<char>(env)), {});
    if (c.find(config) == std::string::npos || c.find("train") == std::string::npos) continue;
    if (v.find(std::string("RANK=") + std::to_string(rank) + '\0') == 0 ||
        v.find(std::string("\0RANK=", 6) + std::to_string(rank) + '\0') != std::string::npos)
      return static_cast<pid_t>(std::stol(pid));
  }
  return -1;
}

}  // namespace

// A real torchrun restart: rank 1 is killed after a checkpoint; torchrun (--max-restarts 1) starts the
// ranks again with TORCHELASTIC_RESTART_COUNT=1, they resume from the last complete checkpoint, and the
// run ends with the weights of a run never interrupted.
TEST(DataParallel, TorchrunRestartResumesFromTheLastCheckpoint) {
  const std::string torchrun = MT_TORCHRUN;
  ASSERT_FALSE(torchrun.empty()) << "torchrun was not found next to the build's PyTorch";
  TempDir d;
  Spec s;
  s.steps = 60;
  const std::string a = write_config(d, "a.yaml", s), b = write_config(d, "b.yaml", s);
  std::string out;
  ASSERT_EQ(run(cli() + " train --quiet --nproc 2 --config " + a, &out), 0) << out;
  const std::string log = d.file("torchrun.log");
  const pid_t tr = start_shell("OMP_NUM_THREADS=1 exec " + torchrun +
                               " --standalone --nproc-per-node 2 --max-restarts 1 --no-python " + cli() +
                               " train --quiet --config " + b + " >" + log + " 2>&1");
  // Once a checkpoint exists and a later step is logged, kill rank 1.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline && ::waitpid(tr, &status, WNOHANG) == 0 &&
         run_metrics(d.file("b.yaml.run")).size() < 4)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const pid_t r1 = find_rank(1, b);
  ASSERT_GT(r1, 0) << mt::test::slurp(log);
  ::kill(r1, SIGKILL);
  ASSERT_EQ(::waitpid(tr, &status, 0), tr);
  const std::string text = mt::test::slurp(log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
  auto ma = run_metrics(d.file("a.yaml.run")), mb = run_metrics(d.file("b.yaml.run"));
  ASSERT_EQ(ma.size(), 60u);
  ASSERT_EQ(mb.size(), 60u) << "each step logged once";
  EXPECT_NE(text.find("torchrun restart 1: resuming from"), std::string::npos) << text;
  mt::io::SafeTensors fa(d.file("a.yaml.run/checkpoints/checkpoint_000060/consolidated/consolidated.safetensors"));
  mt::io::SafeTensors fb(d.file("b.yaml.run/checkpoints/checkpoint_000060/consolidated/consolidated.safetensors"));
  for (const auto& t : fa.tensors()) EXPECT_TRUE(at::equal(fa.get(t.name), fb.get(t.name))) << t.name;
}
