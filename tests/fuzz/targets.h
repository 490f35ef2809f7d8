#pragma once
// Fuzz targets for every file kind users hand the tool: each takes raw bytes, writes them where the
// parser expects a file and runs the parser (and what reads its result). The tool's contract is that
// a bad file ends in an mt::Error whose message names the file; any other exception, a crash, a
// sanitizer report, a hang or a huge allocation is a finding. The same functions run in the libFuzzer
// binaries (tests/fuzz/fuzz_main.cpp, scripts/fuzz.sh) and replay the seed and regression corpora in
// the unit tests (tests/unit/fuzz_regression_test.cpp).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mt::fuzz {

struct Target {
  const char* name;       // safetensors, yaml_config, jsonl_index, alignments, wav, codes
  const char* file_name;  // what the bytes are written as
  void (*run)(const uint8_t* data, size_t size);
};

const std::vector<Target>& targets();
const Target& target(const std::string& name);  // throws std::invalid_argument for an unknown name

// Called with a description of a finding (by default: print it and abort, as libFuzzer expects).
using FindingHandler = void (*)(const std::string& what);
void set_finding_handler(FindingHandler h);

// Runs fn as every target does: an mt::Error naming one of `names` is the tool refusing a bad file;
// an mt::Error naming none of them, or any other exception, goes to the finding handler.
void guarded(const char* target, const std::vector<std::string>& names, const std::function<void()>& fn);

// Writes the seed corpus of every target under dir/<target name>/ (valid files of each kind and a
// few near-misses), returns how many files it wrote.
int write_seeds(const std::string& dir);

}  // namespace mt::fuzz
