// The evaluation suite as users run it, on synthetic espeak-ng sets in the official layouts with a tiny
// hybrid-TTT LM and the reference's small Mimi: eval make-sets -> eval paired (every task) -> eval
// long-context / ttt-probe -> report. Results must be reproducible run to run, the second run must read
// the codes cache, and a missing file must be reported, not dropped.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"

namespace fs = std::filesystem;
using mt::test::cli;
using mt::test::run;
using mt::test::slurp;
using mt::test::TempDir;

namespace {

std::string mimi_args() {
  const std::string d = mt::test::reference_dir() + "/mimi/mimi_small";
  return " --mimi " + d + "/model.safetensors --mimi-config " + d + "/config.json";
}

std::string model_args() { return " --config " + std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml"; }

nlohmann::json read_json(const std::string& p) {
  std::ifstream in(p);
  EXPECT_TRUE(in) << p;
  return nlohmann::json::parse(in);
}

bool have_espeak() { return run("command -v espeak-ng >/dev/null") == 0; }

}  // namespace

TEST(Eval, PairedOnSyntheticSetsIsReproducibleCachedAndHonestAboutMissingFiles) {
  if (!have_espeak()) GTEST_SKIP() << "espeak-ng not installed (scripts/setup.sh installs it)";
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " eval make-sets --quiet --out " + d.file("sets") +
                    " --voices en-us+m3,en-us+f3 --lexical-words 8 --syntactic-pairs 6 --stories 4",
                &out),
            0)
      << out;
  const std::string common = model_args() + mimi_args() + " --cache " + d.file("cache") + " --quiet --bootstrap 200";
  for (const std::string task : {"swuggy", "sblimp", "sstory", "tstory"}) {
    ASSERT_EQ(
        run(cli() + " eval paired --task " + task + " --data " + d.file("sets") + " --out " + d.file("run1") + common,
            &out),
        0)
        << out;
    EXPECT_NE(out.find("accuracy"), std::string::npos) << out;
    EXPECT_NE(out.find("synthetic"), std::string::npos) << "the synthetic label must show: " << out;
    const auto s = read_json(d.file("run1/eval/" + task + "/summary.json"));
    const auto& r = s["result"];
    const int64_t ids = task == "swuggy" ? 8 : task == "sblimp" ? 6 : 4;
    EXPECT_EQ(r["ids"].get<int64_t>(), ids) << task;
    EXPECT_TRUE(r["skipped"].empty()) << task;
    const double acc = r["score"].get<double>();
    EXPECT_GE(acc, 0.0);
    EXPECT_LE(acc, 1.0);
    EXPECT_LE(r["ci"]["lo"].get<double>(), acc);
    EXPECT_GE(r["ci"]["hi"].get<double>(), acc);
    for (const char* red : {"mean", "sum", "semantic", "weighted"}) EXPECT_TRUE(s["by_reduction"].contains(red)) << red;
    EXPECT_TRUE(s["longer_clip_wins"]["score"].is_number());
    // Second run into another folder: every file from the cache, the same numbers.
    ASSERT_EQ(
        run(cli() + " eval paired --task " + task + " --data " + d.file("sets") + " --out " + d.file("run2") + common,
            &out),
        0)
        << out;
    const auto s2 = read_json(d.file("run2/eval/" + task + "/summary.json"));
    EXPECT_EQ(s2["files"]["encoded_now"].get<int64_t>(), 0) << task;
    EXPECT_EQ(s2["result"].dump(), s["result"].dump()) << task;
    EXPECT_EQ(s2["by_reduction"].dump(), s["by_reduction"].dump()) << task;
    EXPECT_EQ(slurp(d.file("run1/eval/" + task + "/items.csv")), slurp(d.file("run2/eval/" + task + "/items.csv")))
        << task;
  }
  // The ZeroSpeech files.
  for (const char* f : {"score_lexical_dev_by_pair.csv", "score_lexical_dev_by_frequency.csv",
                        "score_lexical_dev_by_length.csv", "submission/lexical/dev.txt"})
    EXPECT_TRUE(fs::exists(d.file(std::string("run1/eval/swuggy/") + f))) << f;
  EXPECT_TRUE(fs::exists(d.file("run1/eval/sblimp/score_syntactic_dev_by_type.csv")));
  // One submission line per file.
  std::ifstream sub(d.file("run1/eval/swuggy/submission/lexical/dev.txt"));
  int lines = 0;
  for (std::string l; std::getline(sub, l);) ++lines;
  EXPECT_EQ(lines, 8 * 2 * 2);

  // The official layouts without our extras: a test split with no gold.csv (submission only), and the
  // flat StoryCloze folder with no manifest (pairs by integer prefix, positive first).
  fs::create_directories(d.file("official/lexical/test"));
  fs::create_directories(d.file("official/flat"));
  int copied = 0;
  for (const auto& e : fs::directory_iterator(d.file("sets/lexical/dev")))
    if (e.path().extension() == ".wav" && copied < 6) {
      fs::copy_file(e.path(), d.file("official/lexical/test/" + e.path().filename().string()));
      ++copied;
    }
  ASSERT_EQ(run(cli() + " eval paired --task swuggy --split test --data " + d.file("official") + " --out " +
                    d.file("run5") + common,
                &out),
            0)
      << out;
  EXPECT_NE(out.find("submission written, nothing scored"), std::string::npos) << out;
  std::ifstream tsub(d.file("run5/eval/swuggy/submission/lexical/test.txt"));
  int tlines = 0;
  for (std::string l; std::getline(tsub, l);) ++tlines;
  EXPECT_EQ(tlines, 6);
  for (int i = 0; i < 4; ++i) {
    fs::copy_file(d.file("sets/sstory/" + std::to_string(i) + "_pos.wav"),
                  d.file("official/flat/" + std::to_string(2 * i) + "_a.wav"));
    fs::copy_file(d.file("sets/sstory/" + std::to_string(i) + "_neg.wav"),
                  d.file("official/flat/" + std::to_string(2 * i + 1) + "_b.wav"));
  }
  ASSERT_EQ(
      run(cli() + " eval paired --task sstory --data " + d.file("official/flat") + " --out " + d.file("run5") + common,
          &out),
      0)
      << out;
  // Same clips, same pairs: the same accuracy as with the manifest.
  EXPECT_EQ(read_json(d.file("run5/eval/sstory/summary.json"))["result"]["score"],
            read_json(d.file("run1/eval/sstory/summary.json"))["result"]["score"]);

  // A missing wav: reported with its name, its pair skipped, the rest scored.
  std::string victim;
  for (const auto& e : fs::directory_iterator(d.file("sets/lexical/dev")))
    if (e.path().extension() == ".wav") victim = e.path().stem().string();
  ASSERT_FALSE(victim.empty());
  fs::remove(d.file("sets/lexical/dev/" + victim + ".wav"));
  ASSERT_EQ(
      run(cli() + " eval paired --task swuggy --data " + d.file("sets") + " --out " + d.file("run3") + common, &out), 0)
      << out;
  const auto s3 = read_json(d.file("run3/eval/swuggy/summary.json"));
  EXPECT_EQ(s3["files"]["missing"].get<int64_t>(), 1);
  EXPECT_NE(s3["missing"].dump().find(victim), std::string::npos);
  EXPECT_NE(s3["result"]["skipped"].dump().find(victim), std::string::npos);
  EXPECT_EQ(s3["result"]["pairs"].get<int64_t>(), 8 * 2 - 1);

  // Errors are one clear line: a wrong task, a folder with no data, a placement this LM cannot score.
  EXPECT_NE(
      run(cli() + " eval paired --task swug --data " + d.file("sets") + " --out " + d.file("run4") + common, &out), 0);
  EXPECT_NE(out.find("--task must be"), std::string::npos) << out;
  EXPECT_NE(
      run(cli() + " eval paired --task sblimp --data " + d.file("cache") + " --out " + d.file("run4") + common, &out),
      0);
  EXPECT_NE(out.find("no sblimp data found"), std::string::npos) << out;
  EXPECT_NE(run(cli() + " eval paired --task sstory --placement user --data " + d.file("sets") + " --out " +
                    d.file("run4") + common,
                &out),
            0);
  EXPECT_NE(out.find("cannot be scored"), std::string::npos) << out;
}

TEST(Eval, LongContextProbesAndReport) {
  if (!have_espeak()) GTEST_SKIP() << "espeak-ng not installed (scripts/setup.sh installs it)";
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " eval make-sets --quiet --out " + d.file("sets") +
                    " --voices en-us+m3 --lexical-words 0 "
                    "--syntactic-pairs 0 --stories 3",
                &out),
            0)
      << out;
  {
    std::ofstream l(d.file("list.txt"));
    l << "# the story files\n";
    for (const char* f : {"0_pos", "1_pos", "2_pos"}) l << "sets/sstory/" << f << ".wav\n";
  }
  const std::string common =
      model_args() + mimi_args() + " --cache " + d.file("cache") + " --quiet --bootstrap 100 --chunk 4";
  ASSERT_EQ(run(cli() + " eval ttt-probe --data " + d.file("list.txt") + " --out " + d.file("run") +
                    " --control ttt-reset:16,no-ttt" + common,
                &out),
            0)
      << out;
  EXPECT_NE(out.find("TTT probes"), std::string::npos) << out;
  const auto s = read_json(d.file("run/eval/long_context/summary.json"));
  ASSERT_EQ(s["variants"].size(), 3u);
  EXPECT_EQ(s["variants"][0]["name"], "persist");
  EXPECT_TRUE(s["variants"][0]["slope_ci"].is_array());
  EXPECT_EQ(s["probes"]["units"].size(), 1u);
  for (const char* f : {"curve.csv", "probes.csv", "loss_by_position.png", "ttt_probe_layer_1_hybrid.png"})
    EXPECT_TRUE(fs::exists(d.file(std::string("run/eval/long_context/") + f))) << f;
  // Same command again: the same curve.
  const std::string curve = slurp(d.file("run/eval/long_context/curve.csv"));
  ASSERT_EQ(run(cli() + " eval ttt-probe --data " + d.file("list.txt") + " --out " + d.file("run") +
                    " --control ttt-reset:16,no-ttt" + common,
                &out),
            0)
      << out;
  EXPECT_EQ(slurp(d.file("run/eval/long_context/curve.csv")), curve);

  // A paired result in the same run folder, then the report.
  ASSERT_EQ(run(cli() + " eval paired --task sstory --data " + d.file("sets") + " --out " + d.file("run") +
                    model_args() + mimi_args() + " --cache " + d.file("cache") + " --quiet",
                &out),
            0)
      << out;
  ASSERT_EQ(run(cli() + " report " + d.file("run"), &out), 0) << out;
  const std::string html = slurp(d.file("run/report/index.html"));
  const std::string md = slurp(d.file("run/report/index.md"));
  for (const char* img : {"paired_benchmarks.png", "loss_by_position.png", "ttt_probe_layer_1_hybrid.png"}) {
    EXPECT_NE(html.find(img), std::string::npos) << img;
    EXPECT_NE(md.find(img), std::string::npos) << img;
    EXPECT_GT(fs::file_size(d.file(std::string("run/report/") + img)), 2000u) << img;
  }
  EXPECT_NE(md.find("No training records"), std::string::npos) << "an empty section must say so";
  EXPECT_NE(md.find("sstory"), std::string::npos);
  // A run folder that does not exist: one clear error.
  EXPECT_NE(run(cli() + " report " + d.file("nope"), &out), 0);
  EXPECT_NE(out.find("not a folder"), std::string::npos) << out;
}
