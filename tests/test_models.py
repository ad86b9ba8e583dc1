"""The builder: exact parameter counts, feature graphs as data, fusion rules, numerics modes."""

import pytest
import torch

from scaling_lab.models import build_model
from scaling_lab.errors import SpecError
from scaling_lab.measure import measure
from scaling_lab.models.feature_network import FusionNode, FusionStyle, GlobalPoolAttention
from scaling_lab.graphs import GRAPHS, FeatureGraph, Node, feature_graph
from scaling_lab.paper import OFFICIAL_PARAMS
from scaling_lab.presets import PRESETS, preset
from scaling_lab.spec import FUSIONS
from tests.helpers import TINY



def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_the_official_code(name):
    assert count_params(build_model(PRESETS[name])) == OFFICIAL_PARAMS[name]


def test_bifpn_has_the_papers_eight_nodes_for_p3_to_p7():
    graph = feature_graph("bifpn", 3, 7)
    assert graph.nodes == (
        Node(6, (3, 4)), Node(5, (2, 5)), Node(4, (1, 6)), Node(3, (0, 7)),
        Node(4, (1, 7, 8)), Node(5, (2, 6, 9)), Node(6, (3, 5, 10)), Node(7, (4, 11)),
    )
    assert graph.output_ids == {3: 8, 4: 9, 5: 10, 6: 11, 7: 12}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_every_graph_only_reads_earlier_nodes_and_writes_every_level(name):
    graph = feature_graph(name, 3, 7)
    for index, node in enumerate(graph.nodes):
        assert all(0 <= i < 5 + index for i in node.inputs)
        assert 3 <= node.level <= 7
    assert set(graph.output_ids) == {3, 4, 5, 6, 7}


def test_fpn_is_top_down_and_panet_adds_a_bottom_up_path():
    assert [n.level for n in feature_graph("fpn", 3, 7).nodes] == [6, 5, 4, 3]
    assert [n.level for n in feature_graph("panet", 3, 7).nodes] == [6, 5, 4, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    "network, fusion", [(network, "fast") for network in GRAPHS] + [("bifpn", fusion) for fusion in FUSIONS if fusion != "fast"]
)
def test_every_feature_network_and_fusion_rule_gives_every_level_and_trains_every_weight(network, fusion):
    spec = TINY.replace(feature_network=network, fusion=fusion, fusion_weights="channel" if fusion == "softmax" else "scalar")
    model = build_model(spec)
    class_logits, box_deltas = model(torch.randn(2, 3, 128, 128))
    sizes = [128 // 2**level for level in range(3, 8)]
    assert [tuple(x.shape) for x in class_logits] == [(2, 9 * 3, s, s) for s in sizes]
    assert [tuple(x.shape) for x in box_deltas] == [(2, 9 * 4, s, s) for s in sizes]
    (sum(x.sum() for x in class_logits) + sum(x.sum() for x in box_deltas)).backward()
    fusion_weights = [node.weights for node in model.modules() if isinstance(node, FusionNode) and fusion != "sum"]
    assert len(fusion_weights) == (0 if fusion == "sum" else len(model.feature_network.cells) * len(feature_graph(network, 3, 7).nodes))
    for weights in fusion_weights:
        assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_fusion_rules_weigh_inputs_as_the_paper_defines():
    def node(fusion):
        return FusionNode([4, 4], [0, 0], FusionStyle(4, fusion, "scalar", separable=True, act="swish"))

    weights = torch.tensor([3.0, -1.0])
    fast, softmax, weighted = node("fast"), node("softmax"), node("weighted")
    for module in (fast, softmax, weighted):
        module.weights.data = weights.clone()
    assert torch.allclose(fast.normalized_weights(), torch.tensor([3.0 / (3.0 + 1e-4), 0.0]))
    assert torch.allclose(softmax.normalized_weights(), torch.softmax(weights, 0))
    assert torch.equal(weighted.normalized_weights(), weights)
    assert torch.equal(node("fast").weights.data, torch.ones(2))  # weights start at 1


def test_per_channel_weights_have_one_weight_per_input_and_channel():
    model = build_model(TINY.replace(fusion_weights="channel"))
    node = next(m for m in model.modules() if isinstance(m, FusionNode))
    assert node.weights.shape == (len(node.resample), TINY.channels)


def test_per_pixel_weights_are_one_map_per_input_at_the_nodes_level_normalized_across_inputs():
    spec = TINY.replace(fusion_weights="pixel", fusion="softmax")
    model = build_model(spec)
    cell = model.feature_network.cells[0]
    for graph_node, node in zip(cell.graph.nodes, cell.nodes):
        side = spec.resolution // 2**graph_node.level
        assert node.weights.shape == (len(graph_node.inputs), side, side)
        assert torch.allclose(node.normalized_weights().sum(dim=0), torch.ones(side, side))
    class_logits, box_deltas = model(torch.randn(2, 3, 128, 128))
    (sum(x.sum() for x in class_logits) + sum(x.sum() for x in box_deltas)).backward()
    assert all(node.weights.grad is not None and node.weights.grad.abs().sum() > 0 for node in cell.nodes)
    scalar, pixel = measure(spec.replace(fusion_weights="scalar")), measure(spec)
    maps = sum(node.weights.numel() - len(node.resample) for cell in model.feature_network.cells for node in cell.nodes)
    assert pixel.params - scalar.params == maps
    assert pixel.flops == scalar.flops and pixel.flops_elementwise > scalar.flops_elementwise


def fpn_with_node_choices(min_level, max_level):
    """FPN whose top node fuses by softmax and whose next uses NAS-FPN's global-pool attention."""
    nodes = list(feature_graph("fpn", min_level, max_level).nodes)
    nodes[0] = Node(nodes[0].level, nodes[0].inputs, fusion="softmax")
    nodes[1] = Node(nodes[1].level, nodes[1].inputs, op="global_pool_attention")
    return FeatureGraph(min_level, max_level, tuple(nodes))


def test_a_graph_node_may_carry_its_own_fusion_rule_or_operation(monkeypatch):
    monkeypatch.setitem(GRAPHS, "fpn_choices", fpn_with_node_choices)
    spec = TINY.replace(feature_network="fpn_choices", fusion="sum")
    model = build_model(spec)
    first, second, third = model.feature_network.cells[0].nodes[:3]
    assert first.fusion == "softmax" and first.weights.shape == (2,)
    assert isinstance(second.op, GlobalPoolAttention) and not hasattr(second, "weights")
    assert third.fusion == "sum" and third.op is None
    class_logits, _ = model(torch.randn(2, 3, 128, 128))
    assert len(class_logits) == 5
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.allclose(second.op([a, b]), a * torch.sigmoid(b.mean(dim=(2, 3), keepdim=True)) + b)
    plain = measure(TINY.replace(feature_network="fpn", fusion="sum"))
    chosen = measure(spec)
    assert chosen.flops == plain.flops and chosen.flops_elementwise > plain.flops_elementwise  # the gate's sigmoid and mul count
    assert chosen.uncounted_significant == {}
    bad = FeatureGraph(3, 7, (Node(6, (3, 4), op="attention"),))
    monkeypatch.setitem(GRAPHS, "bad_op", lambda lo, hi: bad)
    with pytest.raises(SpecError, match="node op 'attention' is not valid; valid ops are global_pool_attention"):
        build_model(TINY.replace(feature_network="bad_op"))


def test_d7x_reaches_p8_and_levels_can_shrink():
    spec = TINY.replace(max_level=8, resolution=256)
    class_logits, _ = build_model(spec).eval()(torch.randn(1, 3, 256, 256))
    assert [x.shape[-1] for x in class_logits] == [32, 16, 8, 4, 2, 1]
    class_logits, _ = build_model(TINY.replace(min_level=4, max_level=5, feature_network="fpn")).eval()(torch.randn(1, 3, 128, 128))
    assert [x.shape[-1] for x in class_logits] == [8, 4]


def test_class_bias_starts_at_the_prior():
    model = build_model(TINY)
    bias = model.class_head.predict[-1].bias
    assert torch.allclose(torch.sigmoid(bias), torch.full_like(bias, 0.01))


def test_backbone_classifier_outputs_logits():
    spec = preset("efficientnet-b0").replace(resolution=64, num_classes=10, width=0.25, depth=0.25)
    assert build_model(spec)(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_bf16_autocast_and_channels_last_match_fp32():
    model = build_model(TINY).eval()
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        reference = model(images)[0][0]
        model_cl = model.to(memory_format=torch.channels_last)
        channels_last = model_cl(images.to(memory_format=torch.channels_last))[0][0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model_cl(images.to(memory_format=torch.channels_last))[0][0]
    assert torch.allclose(channels_last, reference, atol=1e-4)
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.float(), reference, atol=0.15, rtol=0.05)


@pytest.mark.slow
def test_compiles_with_torch_compile():
    model = build_model(TINY).eval()
    images = torch.randn(1, 3, 128, 128)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(images)[0][0], model(images)[0][0], atol=1e-5)
