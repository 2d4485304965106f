// Philox4x32 + Box–Muller against tests/vectors/philox.json (written by runtime/noise.py): Random123
// known-answer vectors, then (seed, stream) words and uniforms exactly, gaussians to one float32 ulp.
#include <cstdlib>

#include "check.hpp"
#include "latentfuse/philox.hpp"

using namespace latentfuse;

static uint32_t hex32(const nlohmann::json& s) { return static_cast<uint32_t>(std::stoul(s.get<std::string>(), nullptr, 16)); }
static uint64_t dec64(const nlohmann::json& s) { return std::stoull(s.get<std::string>()); }

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const auto v = check::load(argv[1]);
  for (const auto& kat : v.at("kat")) {
    noise::Block c{hex32(kat["counter"][0]), hex32(kat["counter"][1]), hex32(kat["counter"][2]), hex32(kat["counter"][3])};
    const auto out = noise::philox4x32(c, {hex32(kat["key"][0]), hex32(kat["key"][1])}, kat["rounds"].get<int>());
    for (int j = 0; j < 4; ++j) check::expect(out[j] == hex32(kat["output"][j]), "kat word " + std::to_string(j));
  }
  long worst_ulp = 0;
  for (const auto& d : v.at("derived")) {
    const uint64_t seed = dec64(d["seed"]), stream = dec64(d["stream"]);
    uint64_t n = 1;
    for (const auto& s : d["shape"]) n *= s.get<uint64_t>();
    const std::string tag = "seed " + d["seed"].get<std::string>() + " stream " + d["stream"].get<std::string>();
    const auto words = noise::random_uint32(seed, d["uint32"].size(), stream);
    for (size_t k = 0; k < words.size(); ++k) {
      check::expect(words[k] == hex32(d["uint32"][k]), tag + ": uint32 word " + std::to_string(k));
      if (k < d["uniform"].size())
        check::expect(noise::to_uniform(words[k]) == d["uniform"][k].get<double>(), tag + ": uniform " + std::to_string(k));
    }
    const auto z = noise::gaussian(seed, n, stream);
    check::expect(z.size() == d["gaussian"].size(), tag + ": gaussian count");
    for (size_t k = 0; k < z.size() && k < d["gaussian"].size(); ++k) {
      const auto bits = hex32(d["gaussian_bits"][k]);
      float want;
      std::memcpy(&want, &bits, 4);
      const long ulp = check::ulp_distance(z[k], want);
      worst_ulp = std::max(worst_ulp, ulp);
      check::expect(ulp <= 1, tag + ": gaussian " + std::to_string(k) + " differs by " + std::to_string(ulp) + " ulp");
    }
    // prefix stability: a shorter request starts the longer one
    const auto shorter = noise::gaussian(seed, n / 2, stream);
    for (size_t k = 0; k < shorter.size(); ++k) check::expect(shorter[k] == z[k], tag + ": prefix stability");
  }
  std::cout << "worst gaussian difference: " << worst_ulp << " ulp\n";
  return check::finish("test_philox");
}
