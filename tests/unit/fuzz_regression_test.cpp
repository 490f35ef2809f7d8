// Replays the fuzz targets' seed corpora and every input under tests/fuzz/regressions/<target>/ (the
// findings of scripts/fuzz.sh, kept once fixed) through the same target functions, in the normal
// build: each must end cleanly (parsed, or refused with an mt::Error that names the file).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fuzz/targets.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

std::vector<std::string> g_findings;
void record(const std::string& what) { g_findings.push_back(what); }

void replay(const std::string& target, const fs::path& file) {
  const std::string bytes = mt::test::slurp(file.string());
  g_findings.clear();
  mt::fuzz::set_finding_handler(record);
  mt::fuzz::target(target).run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  mt::fuzz::set_finding_handler(nullptr);
  for (const auto& f : g_findings) ADD_FAILURE() << file << ": " << f;
}

}  // namespace

TEST(Fuzz, SeedCorporaParseCleanly) {
  mt::test::TempDir d;
  const int n = mt::fuzz::write_seeds(d.path.string());
  EXPECT_GE(n, 12);
  for (const auto& t : mt::fuzz::targets()) {
    int seen = 0;
    for (const auto& e : fs::directory_iterator(d.path / t.name)) {
      replay(t.name, e.path());
      ++seen;
    }
    EXPECT_GE(seen, 2) << t.name;
  }
}

TEST(Fuzz, RegressionInputsEndCleanly) {
  const fs::path root = fs::path(MT_SOURCE_DIR) / "tests/fuzz/regressions";
  ASSERT_TRUE(fs::is_directory(root)) << root;
  int n = 0;
  for (const auto& t : mt::fuzz::targets()) {
    if (!fs::is_directory(root / t.name)) continue;
    for (const auto& e : fs::directory_iterator(root / t.name)) {
      replay(t.name, e.path());
      ++n;
    }
  }
  EXPECT_GE(n, 1);
}

// The harness itself must see a finding: an exception other than mt::Error, and an mt::Error whose
// message names no input file; a named mt::Error is not one.
TEST(Fuzz, HarnessReportsForeignExceptionsAndUnnamedErrors) {
  g_findings.clear();
  mt::fuzz::set_finding_handler(record);
  mt::fuzz::guarded("t", {"in.yaml"}, [] { throw std::runtime_error("bad conversion"); });
  mt::fuzz::guarded("t", {"in.yaml"}, [] { mt::fail("ttt.variant: unknown field"); });
  mt::fuzz::guarded("t", {"in.yaml"}, [] { mt::fail("/tmp/in.yaml: ttt.variant: unknown field"); });
  mt::fuzz::guarded("t", {"in.yaml"}, [] {});
  mt::fuzz::set_finding_handler(nullptr);
  ASSERT_EQ(g_findings.size(), 2u);
  EXPECT_NE(g_findings[0].find("bad conversion"), std::string::npos);
  EXPECT_NE(g_findings[1].find("names none"), std::string::npos);
  EXPECT_THROW(mt::fuzz::target("no_such_target"), std::invalid_argument);
}

// A non-scalar key in a config leaked yaml-cpp's exception before the with_file_context fix.
TEST(Fuzz, ConfigWithNonScalarKeyIsRefusedByName) {
  const std::string yaml = "preset: tiny\n? [a, b]\n: 1\n";
  g_findings.clear();
  mt::fuzz::set_finding_handler(record);
  mt::fuzz::target("yaml_config").run(reinterpret_cast<const uint8_t*>(yaml.data()), yaml.size());
  mt::fuzz::set_finding_handler(nullptr);
  EXPECT_TRUE(g_findings.empty()) << g_findings.front();
}
