// Crash safety of `train` (issue 8): SIGINT / SIGTERM finish the step, write a checkpoint and exit with
// 128 + the signal, and --resume then ends bit-identical to a run never stopped; SIGKILL at arbitrary
// moments (with a checkpoint written every step, so kills land inside checkpoint writes too) always
// leaves a checkpoint that resumes, and the metrics hold each step once.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"

namespace fs = std::filesystem;
using mt::test::cli;
using mt::test::run;
using mt::test::slurp;
using mt::test::TempDir;

namespace {

std::string make_data(TempDir& d) {
  std::vector<std::pair<std::string, at::Tensor>> files;
  at::Generator g = at::detail::createCPUGenerator(5);
  for (int i = 0; i < 6; ++i)
    files.emplace_back("f" + std::to_string(i), at::randint(64, {5, 60 + 5 * i}, g, at::kLong));
  mt::train::write_token_dataset(d.file("data"), files);
  return d.file("data/index.jsonl");
}

std::string write_config(TempDir& d, const std::string& name, const std::string& data, int64_t steps,
                         int64_t ckpt_freq) {
  std::ofstream f(d.file(name));
  f << slurp(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml") << "\nrun_dir: " << d.file(name + ".run")
    << "\noverwrite_run_dir: true\ndata:\n  train_data: " << data
    << "\n  shuffle: true\nduration_sec: 1.6\nbatch_size: 2\nmax_steps: " << steps << "\nckpt_freq: " << ckpt_freq
    << "\nnum_ckpt_keep: 2\nseed: 1\noptim:\n  lr: 0.002\n  pct_start: 0.3\nparam_dtype: float32\n"
       "gradient_checkpointing: false\nlog_freq: 1\nthreads: 1\n";
  return d.file(name);
}

// Starts `moshi-ttt ARGS` (exec'd by sh, so the pid is moshi-ttt's), output to log.
pid_t spawn(const std::string& args, const std::string& log) {
  const std::string cmd = "exec " + cli() + " " + args + " > " + log + " 2>&1";
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

int64_t logged_steps(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  int64_t n = 0;
  for (std::string l; std::getline(in, l);) n += l.find("\"kind\":\"train\"") != std::string::npos;
  return n;
}

void expect_same_weights(const std::string& a, const std::string& b) {
  mt::io::SafeTensors fa(a), fb(b);
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (const auto& t : fa.tensors()) EXPECT_TRUE(at::equal(fa.get(t.name), fb.get(t.name))) << t.name;
}

}  // namespace

class StopSignal : public ::testing::TestWithParam<int> {};

TEST_P(StopSignal, FinishesTheStepCheckpointsAndResumesExactly) {
  const int sig = GetParam();
  TempDir d;
  const std::string data = make_data(d);
  const int64_t steps = 60;
  const std::string a = write_config(d, "a.yaml", data, steps, 0), b = write_config(d, "b.yaml", data, steps, 0);
  std::string out;
  ASSERT_EQ(run(cli() + " train --quiet --config " + a, &out), 0) << out;

  const pid_t pid = spawn("train --quiet --config " + b, d.file("b.log"));
  const auto t0 = std::chrono::steady_clock::now();
  while (logged_steps(d.file("b.yaml.run")) < 5 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(kill(pid, sig), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  const std::string log = slurp(d.file("b.log"));
  ASSERT_TRUE(WIFEXITED(status)) << "killed instead of stopping cleanly: " << log;
  EXPECT_EQ(WEXITSTATUS(status), 128 + sig) << log;
  EXPECT_NE(log.find(sig == SIGINT ? "stopped by SIGINT" : "stopped by SIGTERM"), std::string::npos) << log;
  const int64_t done = logged_steps(d.file("b.yaml.run"));
  ASSERT_LT(done, steps) << "the signal came too late to test anything";
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint_%06lld", (long long)done);
  EXPECT_TRUE(fs::exists(d.file("b.yaml.run/checkpoints/") + name + "/training_state.safetensors")) << log;

  ASSERT_EQ(run(cli() + " train --quiet --config " + b + " --resume", &out), 0) << out;
  EXPECT_EQ(logged_steps(d.file("b.yaml.run")), steps);
  std::snprintf(name, sizeof name, "checkpoint_%06lld", (long long)steps);
  expect_same_weights(d.file("a.yaml.run/checkpoints/") + name + "/consolidated/consolidated.safetensors",
                      d.file("b.yaml.run/checkpoints/") + name + "/consolidated/consolidated.safetensors");
}

INSTANTIATE_TEST_SUITE_P(Signals, StopSignal, ::testing::Values(SIGTERM, SIGINT),
                         [](const auto& info) { return std::string(info.param == SIGINT ? "SIGINT" : "SIGTERM"); });

TEST(Crash, SigkillAtAnyMomentLeavesAResumableCheckpoint) {
  TempDir d;
  const std::string data = make_data(d);
  const int64_t steps = 60;
  const std::string a = write_config(d, "a.yaml", data, steps, 1), b = write_config(d, "b.yaml", data, steps, 1);
  std::string out;
  ASSERT_EQ(run(cli() + " train --quiet --config " + a, &out), 0) << out;
  // Six kills, each once the run has logged 4 more steps, plus a stagger of a few ms so that they land
  // in different phases of a step (forward, optimizer, metrics, checkpoint write).
  int kills = 0, resumed = 0;
  for (int i = 0; i < 6; ++i) {
    const bool have_ckpt = fs::is_directory(d.file("b.yaml.run/checkpoints")) && [&] {
      for (const auto& e : fs::directory_iterator(d.file("b.yaml.run/checkpoints")))
        if (e.path().filename().string().rfind("checkpoint_", 0) == 0) return true;
      return false;
    }();
    resumed += have_ckpt;
    const pid_t pid = spawn("train --quiet --config " + b + (have_ckpt ? " --resume" : ""), d.file("b.log"));
    const auto t0 = std::chrono::steady_clock::now();
    int status = 0;
    bool exited = false;
    while (logged_steps(d.file("b.yaml.run")) < 4 * (i + 1) &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds((i * 7) % 20));
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    if (WIFSIGNALED(status)) {
      ++kills;
    } else {
      ASSERT_EQ(WEXITSTATUS(status), 0) << slurp(d.file("b.log"));  // finished before the kill
      break;
    }
  }
  EXPECT_GE(kills, 3) << "the kills must interrupt the run";
  EXPECT_GE(resumed, 2);
  ASSERT_EQ(run(cli() + " train --quiet --config " + b + " --resume", &out), 0) << out;
  // Each step logged once, in order, despite the repeats after each kill.
  std::ifstream in(d.file("b.yaml.run/metrics.jsonl"));
  int64_t expect = 1;
  for (std::string l; std::getline(in, l);) {
    auto j = nlohmann::json::parse(l);
    if (j.value("kind", "") != "train") continue;
    EXPECT_EQ(j["step"].get<int64_t>(), expect) << l;
    ++expect;
  }
  EXPECT_EQ(expect, steps + 1);
  EXPECT_TRUE(fs::exists(d.file("b.yaml.run/loss.png")));
  expect_same_weights(d.file("a.yaml.run/checkpoints/checkpoint_000060/consolidated/consolidated.safetensors"),
                      d.file("b.yaml.run/checkpoints/checkpoint_000060/consolidated/consolidated.safetensors"));
}
