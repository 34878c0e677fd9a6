"""Backbone.pop_stage: the public hand-over of the last stage (the C4 layout's res5 box head)."""
import pytest
import torch

import resbackbones as rb
from resbackbones.layers import ShapeSpec


def test_pop_last_stage_hands_it_over_and_describes_the_rest():
    backbone = rb.build_backbone("resnet18", out_features=("res2", "res5"), checkpoint_stages=("res5",))
    res5 = backbone.stages["res5"]
    assert backbone.pop_stage("res5") is res5
    assert backbone.stage_names == ["stem", "res2", "res3", "res4"]
    assert "res5" not in backbone.stage_shapes()
    assert backbone.output_shape() == {"res2": ShapeSpec(channels=64, stride=4)}
    assert not any(key.startswith("stages.res5.") for key in backbone.state_dict())
    with torch.no_grad():
        assert list(backbone.eval()(torch.zeros(1, 3, 64, 64))) == ["res2"]


def test_pop_only_returned_stage_returns_the_new_last_stage():
    backbone = rb.build_backbone("resnet18", out_features=("res5",))
    backbone.pop_stage("res5")
    assert backbone.out_features == ["res4"]
    assert backbone.output_shape() == {"res4": ShapeSpec(channels=256, stride=16)}


@pytest.mark.parametrize("name", ["res4", "res6"])
def test_pop_refuses_a_stage_that_is_not_last(name):
    backbone = rb.build_backbone("resnet18", out_features=("res5",))
    expected = f"cannot pop stage '{name}' \\(only the last stage can be removed\\); stages: stem, res2, res3, res4, res5"
    with pytest.raises(ValueError, match=expected):
        backbone.pop_stage(name)
    assert backbone.stage_names[-1] == "res5"


def test_pop_refuses_the_only_stage():
    backbone = rb.build_backbone("resnet18", out_features=("stem",))
    with pytest.raises(ValueError, match="cannot pop stage 'stem' \\(it is the only stage\\); stages: stem"):
        backbone.pop_stage("stem")
