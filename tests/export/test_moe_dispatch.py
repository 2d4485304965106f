"""The exported MoE forms (model.moe): the ``grouped`` form (selected experts only, static shapes) passes
the data-dependent-shape scan and TensorRT's op table, and ONNX Runtime matches eager torch within
1e-4, also under the routing that loads two experts with every token; the per-preset choice
(``export_moe_dispatch``) reaches the graph spec, the exported module and the manifest entry."""

import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from latentfuse.export import checks
from latentfuse.export.graphs import DiTSpec, GraphSpec, Resolution, graph_specs
from latentfuse.export.onnx import export_graph
from latentfuse.model.config import DiTConfig
from latentfuse.model.dit import MoEDiT
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.moe import MoEGLU


def _components(dit):
    text = types.SimpleNamespace(max_length=32, hidden_size=dit.config.text_dim,
                                 tokenizer=types.SimpleNamespace(vocab_size=100))
    return types.SimpleNamespace(dit=lambda head: dit, vae=types.SimpleNamespace(latent_channels=16),
                                 text_encoder=text)


def _assert_trt_safe(path):
    assert checks.find_data_dependent_shapes(path) == []
    assert checks.unsupported_trt_ops(path) == []
    checks.check_trt_ops(path, "moe")                            # also input types, where checks has them
    ops = {op for _, op in checks.op_types(path)}
    assert "NonZero" not in ops and "ScatterElements" in ops and "CumSum" in ops
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "ScatterElements":
            assert all(a.s in (b"", b"none") for a in node.attribute if a.name == "reduction")


def test_exported_grouped_dit_is_trt_safe_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    cfg = DiTConfig.from_preset("tiny", head="regression", depth=1, export_moe_dispatch="grouped")
    dit = MoEDiT(cfg).eval()
    with torch.no_grad():                            # zero-initialised gates: perturb like a trained model
        for p in dit.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.05)
    spec = graph_specs(_components(dit), ["regression"])["dit_regression"]
    assert spec.moe_dispatch == "grouped" and spec.to_manifest()["moe_dispatch"] == "grouped"
    back = GraphSpec.from_manifest(spec.name, spec.to_manifest(), Resolution().to_manifest(), {"max_length": 32})
    assert back.moe_dispatch == "grouped"
    module = spec.module(_components(dit))
    assert {b.moe.dispatch for b in module.dit.blocks} == {"grouped"}
    assert {b.moe.dispatch for b in dit.blocks} == {"sparse"}    # the caller's model is left alone

    result = export_graph(spec, module, tmp_path)                # checks the symbolic dims too
    assert result.exporter == "dynamo"
    _assert_trt_safe(result.path)

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for shape in [(1, 64, 64, 5), (3, 128, 96, 7), (2, 256, 160, 32)]:
        feeds = spec.sample_inputs(*shape, seed=1)
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        with torch.no_grad():
            for dispatch in ("dense", "sparse"):
                dit.set_moe_dispatch(dispatch)
                want = dit(feeds["z_a"], feeds["z_b"], feeds["prompt_embeds"], feeds["prompt_mask"]).numpy()
                assert np.abs(got - want).max() <= 1e-4, (shape, dispatch)
        assert np.abs(got).max() > 0.1                           # not a trivial output


def test_exported_grouped_moe_drops_nothing_under_skewed_routing(tmp_path):
    """Every token to experts 2 and 3 (each gets T slots, the others none): the exported graph still
    equals dense at every token count, since the grouped form has no capacity to overflow."""
    torch.manual_seed(2)
    moe = MoEGLU(32, 48, num_experts=4, top_k=2, num_shared=1, dispatch="grouped").eval()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 10.0
        moe.router.weight[3, 0] = 9.0

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = moe

        def forward(self, x):
            return self.moe(x)[0]

    path = tmp_path / "moe.onnx"
    with torch.no_grad():
        torch.onnx.export(Graph(), (torch.randn(2, 24, 32),), str(path), dynamo=True, optimize=True,
                          input_names=["x"], output_names=["y"], opset_version=20, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("b", min=1, max=64),
                                           1: torch.export.Dim("n", min=2, max=4096)},))
    _assert_trt_safe(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, n in [(1, 2), (1, 5), (2, 64), (3, 333)]:
        x = torch.randn(b, n, 32)
        x[..., 0] = x[..., 0].abs() + 1                          # experts 2 and 3 win for every token
        _, top_i, _ = moe.route(x.reshape(-1, 32))
        assert sorted(top_i.unique().tolist()) == [2, 3]
        got = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            want = moe(x, dispatch="dense")[0].numpy()
        assert np.abs(got - want).max() <= 1e-5, (b, n)


def test_export_dispatch_is_checked():
    dit = types.SimpleNamespace(config=DiTConfig.from_preset("tiny"))
    spec = DiTSpec.create("flow", 16, 128, moe_dispatch="sparse")
    with pytest.raises(LatentfuseError, match="exported MoE dispatch must be one of dense, grouped"):
        spec.module(types.SimpleNamespace(dit=lambda head: dit))
    assert graph_specs(_components(MoEDiT(DiTConfig.from_preset("tiny", depth=1))), ["flow"])["dit_flow"] \
        .moe_dispatch == "dense"                                 # the tiny preset's measured choice
