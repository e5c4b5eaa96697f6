"""Speed levers of the engine: autocast choice, evaluation batch size, inference mode, channels_last,
and the device check that keeps a CUDA run from falling back to the CPU."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from tllib_jtln.config import Config
from tllib_jtln.engine import distributed as D
from tllib_jtln.engine.evaluate import eval_batch_size, evaluate
from tllib_jtln.engine.precision import autocast_context, autocast_dtype
from tllib_jtln.errors import UserError
from tllib_jtln.models import apply_memory_format

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


# ----------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device,amp,bf16,expected", [
    (CPU, False, False, None), (CPU, True, False, None), (CPU, False, True, torch.bfloat16),
    (CUDA, True, False, torch.float16), (CUDA, False, True, None), (CUDA, True, True, torch.float16),
])
def test_autocast_dtype_per_device_and_flags(device, amp, bf16, expected):
    assert autocast_dtype(device, amp, bf16) is expected


def test_cpu_bf16_context_runs_linear_layers_in_bfloat16():
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast_context(CPU, Config(cpu_bf16=True)):
        assert layer(x).dtype == torch.bfloat16
    with autocast_context(CPU, Config()):
        assert layer(x).dtype == torch.float32


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("size,device,batch,expected", [
    (28, CPU, 48, 256),     # small images: the cap
    (64, CPU, 48, 256),     # the CPU budget is 256 images of 64 px
    (96, CPU, 16, 112),     # 256 * 64^2 / 96^2 = 113.8 -> multiple of 8
    (224, CPU, 16, 16),     # large images on the CPU: small batches ...
    (224, CPU, 48, 48),     # ... never below the training batch size
    (224, CUDA, 48, 256),   # the CUDA budget is 256 images of 224 px
    (448, CUDA, 32, 64),
    (2048, CPU, 1, 8),      # at least 8
])
def test_eval_batch_size_follows_a_pixel_budget(size, device, batch, expected):
    assert eval_batch_size(Config(batch_size=batch), size, device) == expected


def test_eval_batch_size_defaults_to_the_config():
    assert eval_batch_size(Config(image_size=28, device="cpu")) == 256
    assert eval_batch_size(Config(image_size=None, device="cuda:0", batch_size=8)) == 256
    assert eval_batch_size(Config(image_size=None, device="auto", batch_size=8)) == 16  # 224 px, CPU budget


def test_evaluate_records_no_autograd_and_restores_train_mode():
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), self.training))
            out = self.fc(x)
            return out[:, :0], out

    net = Net().train()
    loader = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    res = evaluate(net, loader, CPU, 2)
    assert seen == [(True, False)] and net.training and res.count == 4


# ----------------------------------------------------------------------------- channels_last
def test_apply_memory_format_converts_conv_weights_only_when_asked():
    def net():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

    plain = apply_memory_format(net(), Config())
    assert plain[0].weight.is_contiguous()
    model = apply_memory_format(net(), Config(channels_last=True))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    x = torch.randn(2, 3, 8, 8)
    assert model[0](x).is_contiguous(memory_format=torch.channels_last)  # batches follow the weights
    model.load_state_dict(plain.state_dict())
    assert torch.allclose(model(x), plain(x), atol=1e-5)


# ----------------------------------------------------------------------------- devices
def test_cuda_without_cuda_is_a_one_line_error_naming_cpu_and_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = D.DistInfo()
    for name in ("cuda", "cuda:1", "CUDA:0"):
        with pytest.raises(UserError) as err:
            D.resolve_device(name, info)
        message = str(err.value)
        assert "\n" not in message and "CUDA is not available" in message
        assert "--device cpu" in message and "auto" in message
    assert D.resolve_device("auto", info) == CPU


def test_cuda_index_beyond_the_device_count_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError) as err:
        D.resolve_device("cuda:1", D.DistInfo())
    message = str(err.value)
    assert "\n" not in message and "only 1 CUDA device" in message and "--device cpu or auto" in message
    with pytest.raises(UserError, match="only 1 CUDA device"):
        D.resolve_device("cuda", D.DistInfo(rank=2, world_size=3, local_rank=2))  # torchrun with too few GPUs


def test_cli_train_on_missing_cuda_exits_2_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tllib_jtln", "train", "--device", "cuda", "--epochs", "1",
                          "--log", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, even on a GPU machine
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "--device cpu" in out.stderr
    assert "Traceback" not in out.stderr
