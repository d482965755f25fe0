import pytest
import torch

from aquamask.model.network import UNet


@pytest.mark.parametrize("shape", [(2, 8, 64, 64), (1, 8, 37, 50), (1, 8, 3, 5)])
def test_unet_logits_shape(shape):
    net = UNet(in_channels=8, base_channels=4, depth=4).eval()
    with torch.inference_mode():
        out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 1, shape[2], shape[3])
    assert torch.isfinite(out).all()


def test_unet_depth_and_width():
    net = UNet(in_channels=6, base_channels=8, depth=3)
    assert net.multiple == 4
    assert net.head.in_channels == 8
    with pytest.raises(ValueError):
        UNet(8, 8, 0)
