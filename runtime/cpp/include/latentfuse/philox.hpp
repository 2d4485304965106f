// Philox4x32-10 + Box–Muller: the C++ twin of runtime/noise.py (its docstring is the specification;
// tests/vectors/philox.json holds the shared vectors). Salmon et al., "Parallel Random Numbers: As
// Easy as 1, 2, 3", SC11; Random123 philox.h.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace latentfuse::noise {

using Block = std::array<uint32_t, 4>;

// Philox4x32-`rounds` of one counter under key (k0, k1).
Block philox4x32(Block counter, std::array<uint32_t, 2> key, int rounds = 10);

// First n words of the (seed, stream) uint32 stream (block i: counter (i lo, i hi, stream lo, stream hi)).
std::vector<uint32_t> random_uint32(uint64_t seed, uint64_t n, uint64_t stream = 0);

// u = (x + 0.5) * 2^-32, exact in float64.
double to_uniform(uint32_t x);

// n standard-normal values (Box–Muller on consecutive word pairs in float64, rounded to float32).
std::vector<float> gaussian(uint64_t seed, uint64_t n, uint64_t stream = 0);

}  // namespace latentfuse::noise
