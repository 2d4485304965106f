// PyTorch AOTInductor backend: one torch::inductor::AOTIModelPackageLoader per graph, loading the
// bundle's <graph>.pt2 packages (export/aoti.py; PyTorch "AOTInductor" docs, C++ inference section).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <map>

#include "latentfuse/backend.hpp"

namespace latentfuse {

namespace {

// export/aoti.py AOTI_MAX_BATCH: the packages' dynamic batch bound (torch.export Dim max)
constexpr int kAotiMaxBatch = 32;

class AotiRunner : public Runner {
 public:
  explicit AotiRunner(const Bundle& bundle) : packages_(bundle.artefacts("aoti")), root_(bundle.root()) {
    if (packages_.empty())
      throw Error(root_.string() + " has no AOTInductor packages (no 'aoti' table in manifest.json); add them with "
                                   "`latentfuse export --checkpoint DIR --out BUNDLE --aoti`");
    for (const auto& [name, entry] : bundle.manifest()["aoti"].items())
      if (entry.is_object() && entry.value("device", "cpu") != "cpu")
        throw Error("AOTInductor package of graph '" + name + "' was compiled for " +
                    entry.value("device", "?") + "; this host runs CPU packages");
    // Load every package now (unzip + dlopen), so the first fuse call's stage times are inference only.
    for (const auto& [name, _] : packages_) loader(name);
  }

  std::string name() const override { return "aoti"; }
  int min_side() const override { return kMinSide; }  // model/geometry.py MIN_SIDE
  int max_batch() const override { return kAotiMaxBatch; }

  std::vector<Tensor> run(const GraphInfo& graph, const std::vector<Tensor>& inputs) override {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> feeds;
    feeds.reserve(inputs.size());
    for (const auto& t : inputs) {
      // from_blob views the host data without a copy; the package does not write its inputs
      if (t.dtype == DType::Float32)
        feeds.push_back(torch::from_blob(const_cast<float*>(t.f.data()), t.shape, torch::kFloat32));
      else
        feeds.push_back(torch::from_blob(const_cast<int64_t*>(t.i.data()), t.shape, torch::kInt64));
    }
    std::vector<at::Tensor> outs;
    try {
      outs = loader(graph.name).run(feeds);
    } catch (const c10::Error& err) {
      throw Error("AOTInductor graph '" + graph.name + "' failed: " + err.what_without_backtrace());
    }
    std::vector<Tensor> result;
    for (auto& o : outs) {
      at::Tensor c = o.to(torch::kFloat32).contiguous();
      std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
      result.push_back(Tensor::from_float(shape, std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel())));
    }
    return result;
  }

 private:
  torch::inductor::AOTIModelPackageLoader& loader(const std::string& graph) {
    auto it = loaders_.find(graph);
    if (it != loaders_.end()) return *it->second;
    auto pkg = packages_.find(graph);
    if (pkg == packages_.end())
      throw Error(root_.string() + " has no AOTInductor package for graph '" + graph +
                  "'; re-export with `latentfuse export --aoti`");
    try {
      auto loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(pkg->second.string());
      return *(loaders_[graph] = std::move(loader));
    } catch (const c10::Error& err) {
      throw Error("cannot load AOTInductor package " + pkg->second.string() + ": " + err.what_without_backtrace());
    }
  }

  std::map<std::string, fs::path> packages_;
  fs::path root_;
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> loaders_;
};

}  // namespace

std::unique_ptr<Runner> make_aoti_runner(const Bundle& bundle) { return std::make_unique<AotiRunner>(bundle); }

}  // namespace latentfuse
