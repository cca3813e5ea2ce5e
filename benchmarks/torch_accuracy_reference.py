"""Train the PyTorch ResNet of ``torch_reference.py`` on the data a bayescomp run reads, as an
accuracy reference: does bayescomp's training reach what a plain PyTorch run of the same recipe
reaches, epoch by epoch?

It answers "is our dense CIFAR training right?" independently of our code: the data come from
``bayescomp.data.load_dataset`` (the same arrays, the same per-channel standardisation with
training-set statistics), everything else is PyTorch's: its ``Conv2d``/``BatchNorm2d``
(momentum 0.1, eps 1e-5) with their default initialisation, its SGD (weight decay on every
parameter, as He et al.'s Torch code), a cosine learning rate per step (SGDR, Loshchilov &
Hutter, ICLR 2017) or He et al.'s step decay, batches of 128 drawn without replacement per
epoch, the standard crop-and-flip augmentation with black padding. Each epoch prints one JSON
line: training loss and accuracy (on the augmented batches, as bayescomp logs them), test
error in percent, seconds.

Run it under an interpreter with a CPU build of PyTorch that also sees bayescomp (a venv with
``--system-site-packages``; PyTorch is never a dependency of bayescomp)::

    /tmp/torchenv/bin/python benchmarks/torch_accuracy_reference.py \\
        --dataset cifar10_jpeg --data-dir ~/data --epochs 5 --seed 0 [--checkpoint FILE]

and compare with ``python -m bayescomp.run +experiment=resnet20_dense_cpu data=cifar10_jpeg
trainer.epochs=5`` (the same schedule over the same number of epochs). ``benchmarks/README.md``
has the comparisons made so far.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_reference  # the networks, shared with train_speed.py --torch


def learning_rate(step: int, total: int, base: float, schedule: str) -> float:
    """Cosine to 0 over ``total`` steps, or ×0.1 at 50 % and 75 % (``step``)."""
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return base * 0.1 ** sum(step >= m * total for m in (0.5, 0.75))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10_jpeg")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--schedule", choices=["cosine", "step"], default="cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None,
                        help="file to save the state to after every epoch and resume from if it "
                             "exists (the same arguments; a resumed run draws what it would have)")
    args = parser.parse_args(argv)

    from bayescomp.data import load_dataset

    data = load_dataset(args.dataset, data_dir=args.data_dir, download=False)
    torch.manual_seed(args.seed)

    def to_nchw(images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    x_train, x_test = to_nchw(data.x_train), to_nchw(data.x_test)
    y_train = torch.from_numpy(data.y_train.astype(np.int64))
    y_test = torch.from_numpy(data.y_test.astype(np.int64))
    fill = torch.tensor(data.black_pixel, dtype=torch.float32)

    net, _, _ = torch_reference.build_model(args.model)
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=args.weight_decay)
    steps_per_epoch = len(x_train) // args.batch_size  # the last partial batch dropped
    total = steps_per_epoch * args.epochs
    step, first_epoch = 0, 0
    settings = {k: v for k, v in vars(args).items() if k != "checkpoint"}
    checkpoint = pathlib.Path(args.checkpoint).expanduser() if args.checkpoint else None
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)  # tensors and plain values only
        if state["settings"] != settings:
            sys.exit(f"error: {checkpoint} was written with {state['settings']}, not "
                     f"{settings}; pass the same arguments or another --checkpoint")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, first_epoch = state["step"], state["epoch"] + 1
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      **vars(args), "resumed_at_epoch": first_epoch}), flush=True)
    for epoch in range(first_epoch, args.epochs):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(len(x_train))
        loss_sum, correct = 0.0, 0
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, args.lr, args.schedule)
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = torch_reference.crop_flip(x_train[idx], fill=fill)
            x = x.contiguous(memory_format=torch.channels_last)
            logits = net(x)
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach())
            correct += int((logits.argmax(1) == y_train[idx]).sum())
        net.eval()
        wrong = 0
        with torch.no_grad():
            for i in range(0, len(x_test), 1000):
                x = x_test[i:i + 1000].contiguous(memory_format=torch.channels_last)
                wrong += int((net(x).argmax(1) != y_test[i:i + 1000]).sum())
        print(json.dumps({
            "epoch": epoch, "loss": round(loss_sum / steps_per_epoch, 4),
            "train_accuracy": round(correct / (steps_per_epoch * args.batch_size), 4),
            "test_error": round(100.0 * wrong / len(x_test), 2),
            "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        if checkpoint is not None:  # written whole, then renamed: a kill leaves the last one
            partial = checkpoint.with_name(checkpoint.name + ".partial")
            torch.save({"settings": settings, "net": net.state_dict(),
                        "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                        "step": step, "epoch": epoch}, partial)
            os.replace(partial, checkpoint)


if __name__ == "__main__":
    main()
