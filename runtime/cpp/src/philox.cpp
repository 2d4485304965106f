#include "latentfuse/philox.hpp"

#include <cmath>

namespace latentfuse::noise {

namespace {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key bumps
constexpr double kTwoPi = 6.283185307179586;                // 2 * float64 pi, as in noise.py
}  // namespace

Block philox4x32(Block c, std::array<uint32_t, 2> key, int rounds) {
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < rounds; ++r) {
    if (r) {  // the key is bumped between rounds, not before the first
      k0 += kW0;
      k1 += kW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0, static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1, static_cast<uint32_t>(p0)};
  }
  return c;
}

std::vector<uint32_t> random_uint32(uint64_t seed, uint64_t n, uint64_t stream) {
  const std::array<uint32_t, 2> key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  std::vector<uint32_t> out(n);
  for (uint64_t i = 0; 4 * i < n; ++i) {
    const Block x = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)},
                               key);
    for (uint64_t j = 0; j < 4 && 4 * i + j < n; ++j) out[4 * i + j] = x[j];
  }
  return out;
}

double to_uniform(uint32_t x) { return (static_cast<double>(x) + 0.5) * 0x1p-32; }

std::vector<float> gaussian(uint64_t seed, uint64_t n, uint64_t stream) {
  const std::vector<uint32_t> words = random_uint32(seed, n + (n & 1), stream);  // pairs
  std::vector<float> out(n);
  for (uint64_t j = 0; 2 * j < n; ++j) {
    const double r = std::sqrt(-2.0 * std::log(to_uniform(words[2 * j])));
    const double theta = kTwoPi * to_uniform(words[2 * j + 1]);
    out[2 * j] = static_cast<float>(r * std::cos(theta));
    if (2 * j + 1 < n) out[2 * j + 1] = static_cast<float>(r * std::sin(theta));
  }
  return out;
}

}  // namespace latentfuse::noise
