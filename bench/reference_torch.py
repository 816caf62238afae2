"""PyTorch references for bench/loop_overhead.py: the zoo as PyTorch's own examples write it, and their loop.

Models take contiguous NCHW images (nn.Conv2d's default) or (N, T) int64 token ids. Their sizes
are read off the canonical weights, which `load_canonical` converts with `load_state_dict`, the
way a PyTorch user loads weights. Import only in a torch worker process.
"""
from __future__ import annotations

import math
import re
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.reference_loops import EVAL_BATCH_SIZE, full_batch_samples, sinusoid


class NHWCFlatten(nn.Module):
    """The engine's flatten order (channels last), for the layout variant only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class MnistNet(nn.Module):
    """pytorch/examples mnist/main.py's Net, sized by the input."""

    def __init__(self, channels: int, flat: int, num_classes: int, flatten: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.flatten = flatten
        self.fc1 = nn.Linear(flat, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.flatten(self.dropout1(x))
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class LambdaLayer(nn.Module):
    def __init__(self, lambd) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambd(x)


class BasicBlock(nn.Module):
    """akamaster/pytorch_resnet_cifar10's block, option A: strided identity, zero-padded channels."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, channels: int, num_blocks: list[int], num_classes: int) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int, embed_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embedding(x))
        return self.fc(hidden[-1])


class TransformerClassifier(nn.Module):
    """The PyTorch transformer tutorial's encoder (embedding * sqrt(d) + positions) with a mean-pool classifier."""

    def __init__(self, vocab: int, length: int, d_model: int, nhead: int, d_hid: int, nlayers: int,
                 num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab, d_model)
        self.register_buffer("pe", torch.from_numpy(sinusoid(length, d_model)), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, nlayers)
        self.decoder = nn.Linear(d_model, num_classes)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        x = self.embedding(src) * math.sqrt(self.d_model) + self.pe[:src.size(1)]
        return self.decoder(self.encoder(x).mean(dim=1))


def build(model: str, weights: dict, input_shape: tuple[int, ...], choice: bool = False) -> nn.Module:
    """The reference model loaded with the canonical weights; choice: the CHOICE_VARIANTS variant."""
    num_classes = weights[[name for name in weights if name.endswith("/bias")][-1]].shape[0]
    if model in ("mlp", "cnn", "mnist_cnn", "resnet"):
        height, width, channels = input_shape
    flatten = NHWCFlatten() if choice else nn.Flatten()
    if model == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(height * width * channels, 128), nn.ReLU(),
                            nn.Linear(128, num_classes))
    elif model == "cnn":
        net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), flatten, nn.Linear((height // 2) * (width // 2) * 64, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    elif model == "mnist_cnn":
        net = MnistNet(channels, ((height - 4) // 2) * ((width - 4) // 2) * 64, num_classes, flatten)
    elif model == "resnet":
        blocks = len({name.split("/")[1] for name in weights if name.startswith("stage1/")})
        net = ResNet(channels, [blocks] * 3, num_classes)
    elif model == "lstm":
        vocab, embed_dim = weights["embedding/embeddings"].shape
        net = LSTMClassifier(vocab, embed_dim, weights["lstm/recurrent_kernel"].shape[0], num_classes)
    elif model == "transformer":
        vocab, d_model = weights["embedding/embeddings"].shape
        layers = len({name.split("/")[0] for name in weights if re.match(r"layer\d+/", name)})
        net = TransformerClassifier(vocab, input_shape[0], d_model, weights["layer1/attention/query/kernel"].shape[1],
                                    weights["layer1/ffn1/kernel"].shape[1], layers, num_classes)
    else:
        raise ValueError(f"model={model!r}: no PyTorch reference for it")
    load_canonical(net, model, weights, input_shape, nhwc_flatten=choice)
    if model == "lstm" and not choice:
        # Keras's LSTM has one bias, nn.LSTM two (b_ih + b_hh): as the engine does, b_hh stays at 0, frozen.
        net.lstm.bias_hh_l0.requires_grad_(False)
    if choice and model in ("cnn", "mnist_cnn", "resnet"):
        net = net.to(memory_format=torch.channels_last)
    return net


def load_canonical(net: nn.Module, model: str, weights: dict, input_shape: tuple[int, ...],
                   nhwc_flatten: bool) -> None:
    """Convert canonical (Keras-layout) weights to the net's state dict and load it strictly."""
    state = net.state_dict()
    if model == "lstm":
        converted = {
            "embedding.weight": weights["embedding/embeddings"],
            "lstm.weight_ih_l0": weights["lstm/kernel"].T, "lstm.weight_hh_l0": weights["lstm/recurrent_kernel"].T,
            "lstm.bias_ih_l0": weights["lstm/bias"], "lstm.bias_hh_l0": np.zeros_like(weights["lstm/bias"]),
            "fc.weight": weights["dense/kernel"].T, "fc.bias": weights["dense/bias"],
        }
    elif model == "transformer":
        converted = _transformer_state(weights)
    else:
        # Sequential-shaped models: state-dict order is canonical order (batch-norm counters aside).
        keys = [key for key in state if not key.endswith("num_batches_tracked")]
        if len(keys) != len(weights):
            raise ValueError(f"{model}: {len(keys)} tensors in the reference, {len(weights)} canonical")
        converted = {}
        for key, (name, value) in zip(keys, weights.items()):
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            elif value.ndim == 2:
                if name == "dense1/kernel" and not nhwc_flatten:
                    value = _chw_rows(value, _feature_map(model, input_shape))
                value = value.T  # (in, out) -> (out, in)
            converted[key] = value
    missing = sorted(set(state) - set(converted) - {k for k in state if k.endswith("num_batches_tracked")})
    if missing:
        raise ValueError(f"{model}: no canonical tensor for {missing}")
    state.update({key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
                  for key, value in converted.items()})
    net.load_state_dict(state, strict=True)


def _feature_map(model: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of what the first dense layer flattens."""
    height, width, _ = input_shape
    if model == "cnn":
        return height // 2, width // 2  # 'same' convs, one 2x2 max-pool
    if model == "mnist_cnn":
        return (height - 4) // 2, (width - 4) // 2  # two 'valid' 3x3 convs, one 2x2 max-pool
    return height, width  # mlp: the image itself


def _chw_rows(kernel: np.ndarray, feature_map: tuple[int, int]) -> np.ndarray:
    """Dense rows in HWC order (Keras's flatten) reordered to CHW order (nn.Flatten on NCHW)."""
    h, w = feature_map
    return kernel.reshape(h, w, -1, kernel.shape[1]).transpose(2, 0, 1, 3).reshape(kernel.shape)


def _transformer_state(weights: dict) -> dict[str, np.ndarray]:
    d = weights["embedding/embeddings"].shape[1]
    state = {"embedding.weight": weights["embedding/embeddings"],
             "decoder.weight": weights["dense/kernel"].T, "decoder.bias": weights["dense/bias"]}
    index = 1
    while f"layer{index}/ffn1/kernel" in weights:
        w = {name.split("/", 1)[1]: value for name, value in weights.items() if name.startswith(f"layer{index}/")}
        key = f"encoder.layers.{index - 1}."
        # Keras's (d, heads, head_dim) kernels are head-major, as nn.MultiheadAttention splits its rows.
        state[key + "self_attn.in_proj_weight"] = np.concatenate(
            [w[f"attention/{p}/kernel"].reshape(d, d).T for p in ("query", "key", "value")])
        state[key + "self_attn.in_proj_bias"] = np.concatenate(
            [w[f"attention/{p}/bias"].reshape(d) for p in ("query", "key", "value")])
        state[key + "self_attn.out_proj.weight"] = w["attention/output/kernel"].reshape(d, d).T
        state[key + "self_attn.out_proj.bias"] = w["attention/output/bias"]
        for part, torch_name in (("ffn1", "linear1"), ("ffn2", "linear2")):
            state[key + f"{torch_name}.weight"] = w[f"{part}/kernel"].T
            state[key + f"{torch_name}.bias"] = w[f"{part}/bias"]
        for part in ("norm1", "norm2"):
            state[key + f"{part}.weight"] = w[f"{part}/gamma"]
            state[key + f"{part}.bias"] = w[f"{part}/beta"]
        index += 1
    return state


def inputs(x: np.ndarray, channels_last: bool) -> torch.Tensor:
    """NHWC images as NCHW (contiguous, or channels_last strides for the layout variant); token ids as they are."""
    tensor = torch.from_numpy(x)
    if tensor.ndim != 4:
        return tensor
    tensor = tensor.permute(0, 3, 1, 2)
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def logits(model: str, weights: dict, x: np.ndarray, choice: bool = False) -> np.ndarray:
    """The reference model's outputs on x in eval mode (mnist_cnn: log-probabilities, as its Net returns)."""
    net = build(model, weights, x.shape[1:], choice).eval()
    with torch.no_grad():
        return net(inputs(x, channels_last=choice)).numpy()


def torch_reference(model: str, mode: str, epochs: int, data, weights: dict, hparams: dict, seed: int,
                    choice: bool = False, use_loader: bool = False) -> list[float]:
    """The pytorch/examples loop (train(); zero_grad; loss; backward; step), torch.compile'd in compiled mode."""
    if mode not in ("eager", "compiled"):
        raise ValueError(f"mode={mode!r}: torch references run eager or compiled")
    torch.manual_seed(seed)
    net = build(model, weights, data.x_train.shape[1:], choice)
    criterion = F.nll_loss if model == "mnist_cnn" else F.cross_entropy  # MnistNet returns log_softmax
    if mode == "compiled":
        net = torch.compile(net)  # the documented one-liner; the optimizer still sees the same parameters
    x = inputs(data.x_train, channels_last=choice)  # NCHW once, up front
    y = torch.from_numpy(data.y_train)
    x_test, y_test = inputs(data.x_test, channels_last=choice), torch.from_numpy(data.y_test)
    # Frozen parameters (the LSTM's b_hh) get no gradient, and Adam skips a parameter without one.
    optimizer = torch.optim.Adam(net.parameters(), lr=hparams["lr"], eps=1e-8)
    batch = hparams["batch_size"]
    n_full = full_batch_samples(len(x), batch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True,
                                         drop_last=True)

    def batches():
        if use_loader:
            yield from loader
            return
        order = torch.randperm(len(x))
        for start in range(0, n_full, batch):  # full batches only
            index = order[start:start + batch]
            yield x[index], y[index]

    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        steps = 0
        for xb, yb in batches():
            optimizer.zero_grad()
            loss = criterion(net(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
        times.append(time.perf_counter() - start)
        if steps * batch != n_full:
            raise RuntimeError(f"torch reference trained {steps} batches of {batch}, expected {n_full} samples")
        test(net, criterion, x_test, y_test)  # after every epoch, untimed, as pytorch/examples and the engine do
    return times


def test(net: nn.Module, criterion, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """pytorch/examples' test(): eval mode, no_grad, summed loss and accuracy over the test set (batches of 1,024)."""
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH_SIZE):
            output = net(x[start:start + EVAL_BATCH_SIZE])
            target = y[start:start + EVAL_BATCH_SIZE]
            loss += criterion(output, target, reduction="sum").item()
            correct += int((output.argmax(dim=1) == target).sum())
    return loss / len(x), correct / len(x)
