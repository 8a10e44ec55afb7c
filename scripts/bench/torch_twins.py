"""PyTorch twins of aezoo's image zoo entries, for `cargo xtask bench`.

usage: python3 scripts/bench/torch_twins.py <entry> [--steps N] [--threads 2] [--data DIR]

Builds the entry's model from the same `configs/<entry>.json` aezoo reads
(families ae-mlp, ae-conv, vae-mlp, vae-conv, and codec for the layer-list
codecs of 28x28 images; same layers, shapes and parameter count), then follows the protocol of shared/bench/pytorch_ref.py:
Adam (lr from the config), the config's batch size, Fashion-MNIST, data
loading not timed; trains N steps (default: one epoch), times inference in
batches of 1000 over the 10k test images, and reports the test MSE per pixel
(of clean inputs), forward FLOPs per image (torch's FlopCounterMode) and peak
RSS as one JSON line. Needs: pip install torch numpy.
"""
import argparse, gzip, json, math, os, resource, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("entry")
p.add_argument("--steps", type=int, default=0, help="training steps (0: one epoch)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--infer-reps", type=int, default=0,
               help="only time recon on one batch of 1000 random images this many times, print median/min "
                    "(the twin of `cargo run --release -p aezoo-cli --example infer_speed -- <entry> <reps>`)")
p.add_argument("--seed", type=int, default=0,
               help="seed of the initial weights and noise (data order: 42 + seed); `cargo xtask quality --twins` varies it")
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--device", default="cpu",
               help="cpu or cuda: on cuda each step and batch ends with torch.cuda.synchronize(), as aezoo's bench "
                    "waits for its device (PyTorch CUDA eager, the twin of `aezoo bench --device cuda`)")
p.add_argument("--configs", default=os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
A = p.parse_args()
torch.set_num_threads(A.threads)
CFG = json.load(open(os.path.join(A.configs, f"{A.entry}.json")))
M, T = CFG["model"], CFG["train"]
ACT = {"relu": F.relu, "sigmoid": torch.sigmoid, "silu": F.silu, "none": lambda x: x}


def idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[4:8], "big")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, 28, 28).astype(np.float32) / 255.0)


class MlpAe(nn.Module):  # aezoo-ae mlp.rs
    def __init__(self, m):
        super().__init__()
        d = math.prod(m["image"])
        dims = [d] + m.get("hidden", []) + [m["latent"]]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        rev = dims[::-1]
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(rev, rev[1:]))
        self.act = ACT[m.get("activation", "relu")]
        self.code_act = ACT[m.get("code_activation", "relu")]
        self.sparsity = m.get("sparsity", 0.0)
        self.shape = m["image"]

    def encode(self, x):
        h = x.flatten(1)
        for i, l in enumerate(self.enc):
            h = (self.act if i < len(self.enc) - 1 else self.code_act)(l(h))
        return h

    def decode(self, z):
        h = z
        for i, l in enumerate(self.dec):
            h = l(h)
            h = self.act(h) if i < len(self.dec) - 1 else torch.sigmoid(h)
        return h.view(-1, *self.shape)

    def recon(self, x):
        return self.decode(self.encode(x))

    def loss(self, x, target):
        z = self.encode(x)
        l = F.mse_loss(self.decode(z), target)
        if self.sparsity > 0:
            l = l + self.sparsity * z.abs().sum() / x.shape[0]
        return l


class ConvAe(nn.Module):  # aezoo-ae conv.rs
    def __init__(self, m):
        super().__init__()
        c = m["image"][0]
        ch = m["channels"]
        self.pool = m.get("pool", True)
        self.kind = m.get("decoder", "transposed")
        self.convs = nn.ModuleList()
        cin = c
        for co in ch:
            self.convs.append(nn.Conv2d(cin, co, 3, padding=1))
            cin = co
        head = m.get("head", False)
        outs = ch[::-1] if head else ch[::-1][1:] + [c]
        self.ups = nn.ModuleList()
        cin = ch[-1]
        for co in outs:
            if self.pool and self.kind == "transposed":
                self.ups.append(nn.ConvTranspose2d(cin, co, 2, stride=2))
            else:
                self.ups.append(nn.Conv2d(cin, co, 3, padding=1))
            cin = co
        self.head = nn.Conv2d(cin, c, 3, padding=1) if head else None

    def recon(self, x):
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
            if self.pool:
                h = F.max_pool2d(h, 2)
        layers = list(self.ups) + ([self.head] if self.head is not None else [])
        for i, l in enumerate(layers):
            up = i < len(self.ups) and self.pool and self.kind == "upsample"
            h = l(F.interpolate(h, scale_factor=2, mode="nearest") if up else h)
            h = F.relu(h) if i < len(layers) - 1 else torch.sigmoid(h)
        return h

    def loss(self, x, target):
        return F.mse_loss(self.recon(x), target)


class MlpVae(nn.Module):  # aezoo-vae mlp.rs
    def __init__(self, m):
        super().__init__()
        d = math.prod(m["image"])
        hid = m.get("hidden", [])
        self.k = m["latent"]
        self.beta = m.get("beta", 1.0)
        dims = [d] + hid
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.stats = nn.Linear(dims[-1], 2 * self.k)
        rd = [self.k] + hid[::-1]
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(rd, rd[1:]))
        self.out = nn.Linear(rd[-1], d)
        self.shape = m["image"]

    def encode(self, x):
        h = x.flatten(1)
        for l in self.enc:
            h = F.relu(l(h))
        s = self.stats(h)
        return s[:, : self.k], s[:, self.k :]

    def logits(self, z):
        h = z
        for l in self.dec:
            h = F.relu(l(h))
        return self.out(h).view(-1, *self.shape)

    def recon(self, x):
        return torch.sigmoid(self.logits(self.encode(x)[0]))

    def loss(self, x, target):
        mu, lv = self.encode(x)
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
        bce = F.binary_cross_entropy_with_logits(self.logits(z), target, reduction="sum")
        kld = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
        return (bce + self.beta * kld) / x.shape[0]


class ConvVae(MlpVae):  # aezoo-vae conv.rs
    def __init__(self, m):
        nn.Module.__init__(self)
        c, h, w = m["image"]
        ch = m["channels"]
        self.k = m["latent"]
        self.beta = m.get("beta", 1.0)
        f = 2 ** len(ch)
        self.bott = (ch[-1], h // f, w // f)
        self.convs = nn.ModuleList()
        cin = c
        for co in ch:
            self.convs.append(nn.Conv2d(cin, co, 4, stride=2, padding=1))
            cin = co
        flat = ch[-1] * (h // f) * (w // f)
        self.fc = nn.Linear(flat, 2 * self.k)
        self.fc2 = nn.Linear(self.k, flat)
        outs = ch[::-1][1:] + [c]
        self.deconvs = nn.ModuleList()
        cin = ch[-1]
        for co in outs:
            self.deconvs.append(nn.ConvTranspose2d(cin, co, 4, stride=2, padding=1))
            cin = co

    def encode(self, x):
        h = x
        for c in self.convs:
            h = F.relu(c(h))
        s = self.fc(h.flatten(1))
        return s[:, : self.k], s[:, self.k :]

    def logits(self, z):
        h = F.relu(self.fc2(z)).view(-1, *self.bott)
        for i, d in enumerate(self.deconvs):
            h = d(h)
            if i < len(self.deconvs) - 1:
                h = F.relu(h)
        return h


def layer_list(items):  # aezoo-nn spec.rs: the layer grammar's tokens a 28x28 codec uses
    mods = []
    for item in items:
        reps, _, tok = item.rpartition("*")
        name, *a = tok.split("_")
        a = [int(v) for v in a]
        for _ in range(int(reps) if reps else 1):
            if name == "C2d":  # C2d_in_out_k[_s[_p]]
                mods.append(nn.Conv2d(a[0], a[1], a[2], *(a[3:5] or [1])))
            elif name == "CT2d":  # CT2d_in_out_k[_s[_p[_op]]]
                mods.append(nn.ConvTranspose2d(a[0], a[1], a[2], *(a[3:6] or [1])))
            elif name in ("ReLU", "Sigm", "SiLU", "Flat"):
                mods.append({"ReLU": nn.ReLU, "Sigm": nn.Sigmoid, "SiLU": nn.SiLU, "Flat": nn.Flatten}[name]())
            elif name == "Lin":
                mods.append(nn.Linear(a[0], a[1]))
            elif name == "Unflat":
                mods.append(nn.Unflatten(1, tuple(a)))
            else:
                raise ValueError(f"no PyTorch twin for layer `{item}`")
    return nn.Sequential(*mods)


def ssim(x, y, window=11, sigma=1.5, c1=0.01**2, c2=0.03**2):  # aezoo-metrics: valid Gaussian SSIM per image
    g = torch.exp(-((torch.arange(window, dtype=x.dtype, device=x.device) - window // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    kh, kw = g.view(1, 1, window, 1).repeat(5 * c, 1, 1, 1), g.view(1, 1, 1, window).repeat(5 * c, 1, 1, 1)
    f = torch.cat([x, y, x * x, y * y, x * y], 1)
    f = F.conv2d(F.conv2d(f, kh, groups=5 * c), kw, groups=5 * c)
    mx, my, sxx, syy, sxy = f.split(c, 1)
    sxx, syy, sxy = sxx - mx * mx, syy - my * my, sxy - mx * my
    m = (2 * mx * my + c1) / (mx * mx + my * my + c1) * (2 * sxy + c2) / (sxx + syy + c2)
    return m.flatten(1).mean(1)


def laplace_cdf(x):
    return torch.where(x < 0, 0.5 * torch.exp(x.clamp(max=0)), 1 - 0.5 * torch.exp(-x.clamp(min=0)))


class Codec(nn.Module):  # aezoo-compress lib.rs: layer-list transforms, factorized Laplace prior
    def __init__(self, m):
        super().__init__()
        self.enc, self.dec = layer_list(m["encoder"]), layer_list(m["decoder"])
        c, h, w = m["image"]
        self.pixels = h * w
        with torch.no_grad():
            ch = self.enc(torch.zeros(1, c, h, w)).shape[1]
        self.loc, self.log_scale = nn.Parameter(torch.zeros(ch)), nn.Parameter(torch.zeros(ch))
        self.alpha, self.lam = m.get("alpha", 0.75), m.get("lambda", 0.01)
        if m.get("quantization", "noise") != "noise" or m.get("prior_gain", 1.0) != 1.0:
            raise ValueError("the twin covers noise quantisation with prior_gain 1")

    def recon(self, x):
        return self.dec(self.enc(x).round()).clamp(0, 1)

    def loss(self, x, target):
        y = self.enc(x)
        y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        out = self.dec(y_hat)
        d = self.alpha * (1 - ssim(out, target).mean()) + (1 - self.alpha) * (out - target).abs().mean()
        shape = (1, -1) + (1,) * (y.dim() - 2)
        scale = self.log_scale.clamp(-10, 10).exp().view(shape)
        centred = y_hat - self.loc.view(shape)
        upper, lower = (centred + 0.5) / scale, (centred - 0.5) / scale
        s = 1 - 2 * (upper + lower > 0).to(y.dtype)
        p = (laplace_cdf(s * upper) - laplace_cdf(s * lower)).abs().clamp(min=1e-9)
        bpp = -p.log().sum() / math.log(2) / (x.shape[0] * self.pixels)
        return d + self.lam * bpp


FAMILIES = {"ae-mlp": MlpAe, "ae-conv": ConvAe, "vae-mlp": MlpVae, "vae-conv": ConvVae, "codec": Codec}


def main():
    fam = CFG["family"]
    if fam not in FAMILIES:
        print(json.dumps({"entry": A.entry, "error": f"no PyTorch twin for family {fam}"}))
        return
    if A.infer_reps:
        torch.manual_seed(0)
        model = FAMILIES[fam](M).eval()
        x = torch.rand(1000, *M["image"])
        t = []
        with torch.no_grad():
            for _ in range(5):
                model.recon(x)
            for _ in range(A.infer_reps):
                t0 = time.perf_counter()
                model.recon(x)
                t.append(time.perf_counter() - t0)
        t.sort()
        med, lo = t[len(t) // 2], t[0]
        print(f"{A.entry}: median {med * 1e3:.3f} ms ({1000 / med:.0f} img/s), min {lo * 1e3:.3f} ms ({1000 / lo:.0f} img/s)")
        return
    dev = torch.device(A.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    train = idx_images(f"{A.data}/train-images-idx3-ubyte.gz").to(dev)
    test = idx_images(f"{A.data}/t10k-images-idx3-ubyte.gz").to(dev)
    torch.manual_seed(A.seed)
    model = FAMILIES[fam](M).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=T["lr"])
    bs = T["batch_size"]
    noise = CFG["data"].get("noise")
    n = train.shape[0]
    steps = A.steps or (n + bs - 1) // bs
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(42 + A.seed)).to(dev)
    step_s = 0.0
    model.train()
    for s in range(steps):
        i = (s * bs) % n
        clean = train[perm[i : i + bs]]
        x = (clean + noise["std"] * torch.randn_like(clean)).clamp(0, 1) if noise else clean  # not timed
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x, clean)
        loss.backward()
        opt.step()
        sync()
        step_s += time.perf_counter() - t0
    images = steps * bs
    model.eval()
    inf_s, sse = 0.0, 0.0
    with torch.no_grad():
        model.recon(test[:1000])  # warm-up
        for b in range(test.shape[0] // 1000):
            x = test[b * 1000 : (b + 1) * 1000]
            t0 = time.perf_counter()
            y = model.recon(x)
            sync()
            inf_s += time.perf_counter() - t0
            sse += float(((y - x) ** 2).sum(dtype=torch.float64))
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        with fc:
            model.recon(test[:100])
        flops = fc.get_total_flops() / 100
    print(json.dumps({
        "entry": A.entry, "framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()), "batch": bs, "steps": steps,
        "train_img_s": images / step_s, "infer_img_s": test.shape[0] / inf_s,
        "test_mse": sse / (test.shape[0] * 784), "forward_flops_per_image": flops,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": dev.type,
    }))


if __name__ == "__main__":
    main()
