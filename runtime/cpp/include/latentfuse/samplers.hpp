// Flow-matching samplers (MMAIF 3.4.2, Algorithm 1): an exact mirror of runtime/samplers.py.
//
// Float semantics follow numpy's (NEP 50): each float64 scalar coefficient is rounded to float32 and
// every array operation is one float32 multiply or add, evaluated in the same order as the Python
// expression, so both hosts produce the same latents from the same velocities (build with
// -ffp-contract=off: a fused multiply-add would round differently).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "latentfuse/tensor.hpp"

namespace latentfuse::samplers {

inline constexpr const char* kDefaultSampler = "midpoint_reuse_sde";
inline constexpr int kDefaultSteps = 5;
inline constexpr double kDefaultG = 0.3;

// v(z, t); t is the float64 grid time (the host fills the graph's [B] float32 t input from it).
using Velocity = std::function<Tensor(const Tensor& z, double t)>;

struct Prior {
  std::optional<Tensor> mean;  // empty: the standard Gaussian (mu0 = 0)
  double std = 1.0;
};

struct SampleResult {
  Tensor latent;
  int nfe = 0;
  std::string sampler;
};

struct SamplerSpec {
  std::string name;
  std::string method;  // euler | midpoint | midpoint_reuse | regression
  bool stochastic = false;
  int nfe_per_step = 1;
};

// The registered sampler called `name`, or Error listing the valid names.
const SamplerSpec& get_sampler(const std::string& name);
std::vector<std::string> sampler_names();

// t_k = start + (1 - start) * k / steps, float64 (t_N = 1 exactly; runtime.samplers.time_grid).
std::vector<double> time_grid(int steps, double start = 0.0);

// A flow start in [0, 1) (model.flow.check_start), else an Error naming --start.
double check_start(double start);

// Z_t0 = (1 - t0) * z0 + t0 * estimate: the prior draw and the regression DiT's estimate on the flow's path at
// t0 = start (runtime.samplers.start_latent; model.flow.DEFAULT_START).
Tensor start_latent(const Tensor& z0, const Tensor& estimate, double start);

// Z0 = mu0 + sigma0 * eps, eps = noise stream 0 (runtime.samplers.initial_latent); prior is
// gaussian | source_a | source_b | source_mean.
std::pair<Tensor, Prior> initial_latent(const std::string& prior, const Tensor& like, uint64_t seed,
                                        const Tensor& z_a, const Tensor& z_b, double sigma = 0.5);

// Run sampler `name` (not "regression") from z0; g < 0 means "the default" (kDefaultG for SDE
// samplers, 0 otherwise); a g > 0 for a deterministic sampler is an Error, as in Python. The steps cover
// [start, 1] (start in [0, 1): 0 from the prior, t0 > 0 from start_latent).
SampleResult sample(const std::string& name, const Velocity& velocity, const Tensor& z0, int steps, double g,
                    uint64_t seed, const Prior& prior = {}, double start = 0.0);

}  // namespace latentfuse::samplers
