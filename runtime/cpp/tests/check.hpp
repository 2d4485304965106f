// Minimal test helpers for the plain ctest executables: count failures, print each, exit non-zero.
#pragma once

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "latentfuse/tensor.hpp"

namespace check {

inline int failures = 0;
inline int checks = 0;

inline void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

// True when `f` throws latentfuse::Error (the one-line user-facing failure).
inline bool throws(const std::function<void()>& f) {
  try {
    f();
  } catch (const latentfuse::Error&) {
    return true;
  }
  return false;
}

inline nlohmann::json load(const char* path) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "cannot open " << path << "\n";
    std::exit(1);
  }
  return nlohmann::json::parse(in);
}

inline int finish(const char* name) {
  std::cout << name << ": " << checks - failures << "/" << checks << " checks passed\n";
  return failures ? 1 : 0;
}

// Distance in float32 units in the last place.
inline long ulp_distance(float a, float b) {
  if (a == b) return 0;
  if (std::isnan(a) || std::isnan(b)) return 1L << 40;
  auto key = [](float x) {
    int32_t i;
    std::memcpy(&i, &x, 4);
    return i < 0 ? static_cast<long>(INT32_MIN) - i : static_cast<long>(i);
  };
  return std::labs(key(a) - key(b));
}

}  // namespace check
