"""VGG's classifier_pool: the average pool before fc6 sized for small inputs. The default keeps torchvision's head;
1 feeds a 1x1 pool5 to fc6 directly instead of copying it 49 times, whose 49 weight copies then get one gradient
each, i.e. learn as one weight at 49x the lr. The backbone (what an export holds) is the same either way."""
import pytest
import torch

import resbackbones as rb


def test_default_head_is_torchvisions_and_pool_1_feeds_pool5_directly():
    assert rb.build_classifier("vgg16", 10).head.fc6.in_features == 512 * 7 * 7
    model = rb.build_classifier("vgg16", 10, classifier_pool=1)
    assert model.head.fc6.in_features == 512
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_a_7x7_pool_over_a_1x1_pool5_gives_the_49_copies_one_gradient():
    model = rb.build_classifier("vgg16", 10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # 32 px: pool5 is 1x1
    grad = model.head.fc6.weight.grad.view(4096, 512, 49)
    assert torch.equal(grad, grad[:, :, :1].expand_as(grad))


def test_backbone_weights_do_not_depend_on_the_head():
    small = rb.build_classifier("vgg16", 10, classifier_pool=1).backbone.state_dict()
    assert set(small) == set(rb.build_backbone("vgg16").state_dict())
    rb.build_backbone("vgg16").load_state_dict(small)


@pytest.mark.parametrize("bad", [0, 2.5])
def test_bad_value_is_named(bad):
    with pytest.raises(ValueError, match="classifier_pool must be a positive int"):
        rb.build_backbone("vgg16", classifier_pool=bad)
