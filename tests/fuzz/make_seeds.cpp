// Writes the seed corpora of the fuzz targets: make_seeds DIR (one folder per target).
#include <cstdio>
#include <exception>

#include "targets.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  try {
    const int n = mt::fuzz::write_seeds(argv[1]);
    std::printf("wrote %d seed files under %s\n", n, argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
