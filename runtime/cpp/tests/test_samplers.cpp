// Every sampler against runtime/samplers.py on the affine field of tests/vectors/samplers.json
// (tests/cpp/make_vectors.py): same initial latent, same NFE, same final latent; started cases (start > 0) from
// start_latent with z_b standing in for the regression estimate.
#include "check.hpp"
#include "latentfuse/samplers.hpp"

using namespace latentfuse;

static std::vector<float> floats(const nlohmann::json& j) { return j.get<std::vector<float>>(); }

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const auto v = check::load(argv[1]);
  const auto shape = v["shape"].get<std::vector<int64_t>>();
  const auto a = floats(v["a"]), b = floats(v["b"]), c = floats(v["c"]);
  const Tensor z_a = Tensor::from_float(shape, floats(v["z_a"])), z_b = Tensor::from_float(shape, floats(v["z_b"]));
  const samplers::Velocity velocity = [&](const Tensor& z, double t) {
    Tensor out = z;
    const float tf = static_cast<float>(t);
    for (size_t k = 0; k < out.f.size(); ++k) out.f[k] = (a[k] * z.f[k] + b[k] * tf) + c[k];
    return out;
  };
  long worst = 0;
  for (const auto& cs : v["cases"]) {
    const std::string tag = cs["sampler"].get<std::string>() + "/" + cs["prior"].get<std::string>() + " seed " +
                            std::to_string(cs["seed"].get<int>()) + " steps " + std::to_string(cs["steps"].get<int>());
    auto [z0, prior] = samplers::initial_latent(cs["prior"], z_a, cs["seed"].get<uint64_t>(), z_a, z_b, cs["sigma"].get<double>());
    const auto want0 = floats(cs["z0"]);
    for (size_t k = 0; k < want0.size(); ++k) {
      const long u = check::ulp_distance(z0.f[k], want0[k]);
      worst = std::max(worst, u);
      check::expect(u <= 1, tag + ": initial latent " + std::to_string(k));
    }
    z0.f = want0;  // the sampler comparison starts from Python's exact Z0
    const double start = cs.value("start", 0.0);
    if (start > 0.0) {
      z0 = samplers::start_latent(z0, z_b, start);
      const auto want_start = floats(cs["z_start"]);
      for (size_t k = 0; k < want_start.size(); ++k) {
        const long u = check::ulp_distance(z0.f[k], want_start[k]);
        worst = std::max(worst, u);
        check::expect(u <= 1, tag + " start: started latent " + std::to_string(k));
      }
      z0.f = want_start;
    }
    const auto res = samplers::sample(cs["sampler"], velocity, z0, cs["steps"], cs["g"], cs["seed"].get<uint64_t>(), prior,
                                      start);
    check::expect(res.nfe == cs["nfe"].get<int>(), tag + ": nfe " + std::to_string(res.nfe));
    const auto want = floats(cs["latent"]);
    for (size_t k = 0; k < want.size(); ++k) {
      const long u = check::ulp_distance(res.latent.f[k], want[k]);
      worst = std::max(worst, u);
      // bit-exact float32 arithmetic; a one-ulp gaussian (libm) difference may grow a few ulp
      check::expect(u <= 8, tag + ": latent " + std::to_string(k) + " off by " + std::to_string(u) + " ulp");
    }
  }
  // registry and argument errors
  bool threw = false;
  try {
    samplers::get_sampler("heun");
  } catch (const Error&) {
    threw = true;
  }
  check::expect(threw, "unknown sampler is an error");
  threw = false;
  try {
    samplers::sample("euler", velocity, z_a, 3, 0.5, 0);
  } catch (const Error&) {
    threw = true;
  }
  check::expect(threw, "g > 0 for a deterministic sampler is an error");
  const auto grid = samplers::time_grid(3);
  check::expect(grid.front() == 0.0 && grid.back() == 1.0 && grid[1] == 1.0 / 3.0, "time grid");
  const auto started = samplers::time_grid(4, 0.5);
  check::expect(started.front() == 0.5 && started[1] == 0.625 && started.back() == 1.0, "started time grid");
  threw = false;
  try {
    samplers::sample("euler", velocity, z_a, 3, 0.0, 0, {}, 1.0);
  } catch (const Error&) {
    threw = true;
  }
  check::expect(threw, "a start outside [0, 1) is an error");
  std::cout << "worst latent difference: " << worst << " ulp over " << v["cases"].size() << " cases\n";
  return check::finish("test_samplers");
}
