"""The PyTorch reference of ``train_speed.py --torch``: the same networks' train steps in PyTorch.

Run by ``train_speed.py`` as a worker subprocess under a separate interpreter (``--torch-python``,
a venv with a CPU build of PyTorch; PyTorch is never a dependency of bayescomp). The worker reads
one JSON command per line on stdin and answers one JSON line on stdout, so the parent can time
its own step and this one alternately, round after round, while both see the same machine load:

* ``{"cmd": "build", "model": "resnet20", "batch": 128, "mode": "eager"}`` builds the network
  (``resnet20``, ``resnet56``, ``vgg16``, ``lenet5``), its optimizer and random data, runs two
  warm-up steps (``mode`` ``"compile"``: ``torch.compile`` of the whole step, compiled there) and
  answers ``{"ok": true, "seconds": warm-up time}`` or ``{"ok": false, "error": ...}``;
* ``{"cmd": "run", "steps": N}`` runs N steps of the built network and answers
  ``{"seconds": wall time}``;
* ``{"cmd": "info"}`` answers the torch version, threads and the worker's peak resident memory
  (``VmHWM``: its interpreter and libraries included).

The networks are the ones bayescomp builds (``bayescomp/models``): He et al.'s CIFAR ResNets with
option-A shortcuts and 3x3 convs padded by 1, Li et al.'s VGG-16 with BatchNorm after every conv
and after fc1, LeNet-5-Caffe (two valid 5x5 convs, 2x2 max-pools, fc 500, fc 10). Convs followed
by a BatchNorm have no bias (a bias there is cancelled by the normalisation); LeNet's have one.
Every tensor is channels-last (``torch.channels_last``), PyTorch's fast layout for oneDNN on CPU.
A step is what ``bayescomp.step`` does for a dense run: gather the batch, the CIFAR crop-and-flip
augmentation (pad 4, a random 32x32 crop per image, a random horizontal flip) on the batch as
tensor operations for the CIFAR networks, forward, mean cross-entropy, backward, the optimizer
step (SGD with momentum 0.9 and weight decay on every parameter for the CIFAR networks, Adam for
LeNet-5).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the option-A shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))  # zero channels appended (option A)
        return F.relu(h + x)


class ResNet(nn.Module):
    def __init__(self, n: int, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for s, width in enumerate((16, 32, 64)):
            for b in range(n):
                stride = 2 if b == 0 and s > 0 else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class VGG16(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for block in ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3):
            for width in block:
                layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU()]
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc1, self.bn_fc1, self.fc2 = nn.Linear(512, 512), nn.BatchNorm1d(512), nn.Linear(
            512, classes)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.fc2(F.relu(self.bn_fc1(self.fc1(x))))


class LeNet5(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def build_model(name: str) -> tuple[nn.Module, tuple[int, int, int], bool]:
    """``(model, (c, h, w), cifar)`` of a bayescomp model name."""
    if name in ("resnet20", "resnet56"):
        return ResNet({"resnet20": 3, "resnet56": 9}[name]), (3, 32, 32), True
    if name == "vgg16":
        return VGG16(), (3, 32, 32), True
    if name == "lenet5":
        return LeNet5(), (1, 28, 28), False
    raise ValueError(f"no PyTorch reference for {name!r}")


def crop_flip(images: torch.Tensor, pad: int = 4, fill: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Pad, one random crop back to size per image, a random horizontal flip (NCHW batch).

    The padding is 0, or ``fill`` per channel (e.g. the preprocessed black pixel, as bayescomp
    pads)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    if fill is not None:
        border = torch.ones(h + 2 * pad, w + 2 * pad)
        border[pad:pad + h, pad:pad + w] = 0
        padded = padded + border * fill.view(1, c, 1, 1)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2))
    rows = offsets[:, :1] + torch.arange(h)
    cols = offsets[:, 1:] + torch.arange(w)
    flips = torch.rand(n) < 0.5
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    # Advanced indexing on (n, h+2p, w+2p, c) gives (n, h, w, c): a channels-last gather.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def peak_resident_mib() -> float:
    """This process's peak resident memory in MiB.

    ``VmHWM`` of ``/proc/self/status`` where there is one: ``getrusage``'s ``ru_maxrss``
    survives ``exec`` on Linux, so a worker started by a large parent would report the
    parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    def __init__(self):
        self.step = None

    def build(self, model: str, batch: int, mode: str, steps: int = 2) -> dict:
        torch.manual_seed(0)
        net, (c, h, w), cifar = build_model(model)
        net = net.to(memory_format=torch.channels_last).train()
        if cifar:
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9,
                                        weight_decay=1e-4)
        else:
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        # As bayescomp's benchmark: a pool of random images indexed by each step's batch.
        x_all = torch.randn(batch * 8, c, h, w).contiguous(memory_format=torch.channels_last)
        y_all = torch.randint(0, 10, (batch * 8,))

        def train_step(x, y):
            if cifar:
                x = crop_flip(x)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

        if mode == "compile":
            train_step = torch.compile(train_step)
        elif mode != "eager":
            raise ValueError(f"unknown mode {mode!r}")
        self.count = 0

        def one_step():
            idx = torch.randint(0, x_all.shape[0], (batch,))
            return train_step(x_all[idx], y_all[idx])

        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        self.step = one_step
        return {"ok": True, "seconds": time.perf_counter() - start}

    def run(self, steps: int) -> dict:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return {"seconds": time.perf_counter() - start}


def main() -> None:
    worker = Worker()
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "build":
                answer = worker.build(command["model"], int(command["batch"]),
                                      command.get("mode", "eager"))
            elif command["cmd"] == "run":
                answer = worker.run(int(command["steps"]))
            elif command["cmd"] == "info":
                answer = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "maxrss_mib": peak_resident_mib()}
            else:
                answer = {"ok": False, "error": f"unknown command {command['cmd']!r}"}
        except Exception as error:  # reported to the parent, which prints it
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
