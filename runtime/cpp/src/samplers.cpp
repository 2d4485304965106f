#include "latentfuse/samplers.hpp"

#include <cmath>
#include <map>

#include "latentfuse/philox.hpp"

namespace latentfuse::samplers {

namespace {

const std::vector<SamplerSpec>& registry() {
  static const std::vector<SamplerSpec> specs = {
      {"euler", "euler", false, 1},
      {"midpoint", "midpoint", false, 2},
      {"midpoint_reuse", "midpoint_reuse", false, 1},
      {"euler_sde", "euler", true, 1},
      {"midpoint_sde", "midpoint", true, 2},
      {"midpoint_reuse_sde", "midpoint_reuse", true, 1},
      {"regression", "regression", false, 0},
  };
  return specs;
}

void check_same(const Tensor& a, const Tensor& b, const char* what) {
  if (a.shape != b.shape)
    throw Error(std::string(what) + ": shape " + shape_str(b.shape) + " does not match the latent " + shape_str(a.shape));
}

// a + b * float32(c)  (numpy: `a + b * c` with a Python float c)
Tensor axpy(const Tensor& a, const Tensor& b, double c) {
  check_same(a, b, "velocity");
  const float cf = static_cast<float>(c);
  Tensor out = a;
  for (size_t k = 0; k < out.f.size(); ++k) out.f[k] = a.f[k] + b.f[k] * cf;
  return out;
}

// model.flow.score_from_velocity: (t*v [+ mean] - z) * float32(1 / ((1 - t) * std^2))
Tensor score(const Tensor& z, const Tensor& v, double t, const Prior& prior) {
  if (!(t >= 0.0 && t < 1.0)) throw Error("the interpolant score needs 0 <= t < 1, got t=" + std::to_string(t));
  const float tf = static_cast<float>(t);
  const float coef = static_cast<float>(1.0 / ((1.0 - t) * prior.std * prior.std));
  Tensor out = z;
  for (size_t k = 0; k < out.f.size(); ++k) {
    float num = tf * v.f[k];
    if (prior.mean) num = num + prior.mean->f[k];
    out.f[k] = (num - z.f[k]) * coef;
  }
  return out;
}

// z + s * float32(c1) + eps * float32(c2), left to right as numpy evaluates it.
void add_langevin(Tensor& z, const Tensor& s, double c1, const std::vector<float>& eps, double c2) {
  const float a = static_cast<float>(c1), b = static_cast<float>(c2);
  for (size_t k = 0; k < z.f.size(); ++k) z.f[k] = (z.f[k] + s.f[k] * a) + eps[k] * b;
}

}  // namespace

const SamplerSpec& get_sampler(const std::string& name) {
  for (const auto& s : registry())
    if (s.name == name) return s;
  std::string names;
  for (const auto& s : registry()) names += (names.empty() ? "" : ", ") + s.name;
  throw Error("unknown sampler '" + name + "': choose one of " + names);
}

std::vector<std::string> sampler_names() {
  std::vector<std::string> out;
  for (const auto& s : registry()) out.push_back(s.name);
  return out;
}

std::vector<double> time_grid(int steps, double start) {
  std::vector<double> grid(steps + 1);
  for (int k = 0; k <= steps; ++k) grid[k] = static_cast<double>(k) / steps;
  if (start != 0.0) {
    for (double& t : grid) t = start + (1.0 - start) * t;
    grid[steps] = 1.0;
  }
  return grid;
}

double check_start(double start) {
  if (!(std::isfinite(start) && start >= 0.0 && start < 1.0))
    throw Error("--start must be a number in [0, 1) (0: from the prior), got " + std::to_string(start));
  return start;
}

Tensor start_latent(const Tensor& z0, const Tensor& estimate, double start) {
  check_start(start);
  check_same(z0, estimate, "regression estimate");
  Tensor z = z0;  // (1 - t0) * z0 + t0 * estimate, as model.flow.interpolate computes it in float32
  const float a = static_cast<float>(1.0 - start), b = static_cast<float>(start);
  for (size_t k = 0; k < z.f.size(); ++k) z.f[k] = a * z0.f[k] + b * estimate.f[k];
  return z;
}

std::pair<Tensor, Prior> initial_latent(const std::string& prior, const Tensor& like, uint64_t seed,
                                        const Tensor& z_a, const Tensor& z_b, double sigma) {
  Tensor eps = Tensor::from_float(like.shape, noise::gaussian(seed, like.size(), 0));
  if (prior == "gaussian") return {eps, Prior{}};
  if (prior != "source_a" && prior != "source_b" && prior != "source_mean")
    throw Error("unknown prior '" + prior + "': choose one of gaussian, source_a, source_b, source_mean");
  if (!(std::isfinite(sigma) && sigma > 0))
    throw Error("source prior '" + prior + "' needs a noise level sigma > 0 (got " + std::to_string(sigma) + ")");
  Tensor mean = prior == "source_b" ? z_b : z_a;
  if (prior == "source_mean") {
    check_same(z_a, z_b, "source latent z_b");
    for (size_t k = 0; k < mean.f.size(); ++k) mean.f[k] = 0.5f * (z_a.f[k] + z_b.f[k]);
  }
  check_same(mean, eps, "prior noise");
  Tensor z0 = axpy(mean, eps, sigma);  // mean + std * eps
  return {z0, Prior{mean, sigma}};
}

SampleResult sample(const std::string& name, const Velocity& velocity, const Tensor& z0, int steps, double g,
                    uint64_t seed, const Prior& prior, double start) {
  check_start(start);
  const SamplerSpec& spec = get_sampler(name);
  if (spec.method == "regression") throw Error("the regression sampler makes one call of the regression graph");
  if (steps < 1) throw Error("sampling steps must be an integer >= 1, got " + std::to_string(steps));
  if (g < 0) g = spec.stochastic ? kDefaultG : 0.0;
  if (!spec.stochastic && g != 0.0)
    throw Error("sampler '" + name + "' is deterministic and takes no diffusion norm (got g=" + std::to_string(g) +
                "); use one of euler_sde, midpoint_sde, midpoint_reuse_sde");
  if (!std::isfinite(g)) throw Error("diffusion norm g must be finite and >= 0");
  if (z0.dtype != DType::Float32) throw Error("the initial latent must be float32");
  if (prior.mean) check_same(z0, *prior.mean, "prior mean");
  const double var = prior.std * prior.std;
  const std::vector<double> grid = time_grid(steps, start);
  SampleResult result;
  result.sampler = name;
  auto v_fn = [&](const Tensor& z, double t) {
    ++result.nfe;
    Tensor v = velocity(z, t);
    check_same(z, v, "velocity");
    return v;
  };
  Tensor z = z0;
  for (int k = 0; k < steps; ++k) {
    const double t1 = grid[k], t2 = grid[k + 1], h = t2 - t1;
    const Tensor v1 = v_fn(z, t1);
    Tensor z_next;
    if (spec.method == "euler") {
      const double kappa = g * std::pow(std::sin(M_PI * t1), 2);
      z_next = axpy(z, v1, h);
      if (kappa > 0.0) {
        const Tensor s = score(z, v1, t1, prior);
        const std::vector<float> eps = noise::gaussian(seed, z.size(), k + 1);
        add_langevin(z_next, s, kappa * var * h, eps, prior.std * std::sqrt(2.0 * kappa * h));
      }
    } else {
      const double half = 0.5 * h, t_mid = 0.5 * (t1 + t2);
      const Tensor z_mid = axpy(z, v1, half);
      const Tensor v_mid = spec.method == "midpoint_reuse" ? v1 : v_fn(z_mid, t_mid);
      const double kappa = g * std::pow(std::sin(M_PI * t_mid), 2);
      z_next = axpy(z, v_mid, h);
      if (kappa > 0.0) {
        const Tensor s = score(z_mid, v_mid, t_mid, prior);
        const std::vector<float> eps = noise::gaussian(seed, z.size(), k + 1);
        add_langevin(z_next, s, kappa * var * half, eps, prior.std * std::sqrt(2.0 * kappa * half));
      }
    }
    z = std::move(z_next);
  }
  result.latent = std::move(z);
  return result;
}

}  // namespace latentfuse::samplers
