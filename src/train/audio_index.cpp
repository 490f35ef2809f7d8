#include "train/audio_index.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::train {

std::vector<AudioEntry> read_audio_index(const std::string& jsonl) {
  std::ifstream in(jsonl);
  MT_CHECK(in, jsonl, ": cannot open");
  std::vector<AudioEntry> out;
  std::string line;
  int64_t n = 0;
  const fs::path base = fs::path(jsonl).parent_path();
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      fail(jsonl, ":", n, ": not valid JSON: ", e.what());
    }
    MT_CHECK(j.is_object() && j.contains("path") && j["path"].is_string(), jsonl, ":", n,
             ": expected {\"path\": ..., \"duration\": ...}");
    const std::string p = j["path"].get<std::string>();
    MT_CHECK(!p.empty() && p.find('\0') == std::string::npos, jsonl, ":", n, ": \"path\" is empty or holds a NUL byte");
    MT_CHECK(j.contains("duration") && j["duration"].is_number(), jsonl, ":", n,
             ": \"duration\" must be a positive number of seconds");
    const double d = j["duration"].get<double>();
    MT_CHECK(std::isfinite(d) && d > 0 && d <= kMaxAudioEntrySeconds, jsonl, ":", n, ": \"duration\" ", d,
             " is not a positive number of seconds up to ", kMaxAudioEntrySeconds);
    AudioEntry e;
    e.id = p;
    fs::path fp(p);
    e.path = (fp.is_absolute() ? fp : base / fp).lexically_normal().string();
    e.duration = d;
    out.push_back(std::move(e));
  }
  MT_CHECK(!out.empty(), jsonl, ": no entries");
  return out;
}

bool is_audio_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      auto j = nlohmann::json::parse(line);
      return j.is_object() && j.contains("duration") && !j.contains("file_id");
    } catch (const std::exception&) {
      return false;
    }
  }
  return false;
}

}  // namespace mt::train
