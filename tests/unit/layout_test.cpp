// The README's layout table is the include order: a folder of src/ includes only itself and the
// folders listed above it, so there is no cycle and a reader can start at the top.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>

#include "test_util.h"

namespace fs = std::filesystem;

TEST(Layout, EverySrcFolderIncludesOnlyFoldersAboveItInTheReadmeTable) {
  const fs::path root = MT_SOURCE_DIR;
  std::map<std::string, int> rank;
  std::ifstream readme(root / "README.md");
  const std::regex row(R"(^\| `src/([a-z_]+)/` \|)");
  for (std::string line; std::getline(readme, line);) {
    std::smatch m;
    if (std::regex_search(line, m, row)) rank.emplace(m[1], static_cast<int>(rank.size()));
  }
  ASSERT_GE(rank.size(), 10u) << "README.md's layout table not found";
  const std::regex inc(R"(^#include "([a-z_]+)/)");
  int checked = 0;
  for (const auto& e : fs::recursive_directory_iterator(root / "src")) {
    if (!e.is_regular_file()) continue;
    const std::string folder = fs::relative(e.path(), root / "src").begin()->string();
    ASSERT_TRUE(rank.count(folder)) << "src/" << folder << "/ is missing from README.md's layout table";
    std::ifstream f(e.path());
    for (std::string line; std::getline(f, line);) {
      std::smatch m;
      if (!std::regex_search(line, m, inc) || !rank.count(m[1])) continue;
      EXPECT_LE(rank.at(m[1]), rank.at(folder))
          << e.path().string() << " includes " << m[1] << "/, listed below src/" << folder << "/ in README.md";
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}
