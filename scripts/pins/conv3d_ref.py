"""Reference values for aezoo-nn's Conv3d and ConvTranspose3d, from PyTorch.

Fixed tensors (no RNG): x[i] = cos(0.05·i), kernel[i] = sin(0.1·i + 0.3)·0.2,
bias[i] = 0.1·i − 0.05, r[i] = sin(0.07·i) (i = flat index). The loss is
L = Σ y·r; printed: Σ y, L, and Σ of each gradient times cos(0.03·i), plus
the first four values of y. Also the TensorFlow-SAME case of the video model
(same_pad, then a valid conv with stride (1, 2, 2)).

    python3 scripts/pins/conv3d_ref.py        # torch 2.x, float64
"""
import math

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def filled(shape, f):
    n = math.prod(shape)
    return torch.tensor([f(i) for i in range(n)]).reshape(shape)


def probe(t):
    return float((t.flatten() * filled((t.numel(),), lambda i: math.cos(0.03 * i))).sum())


def case(name, transposed, xs, ks, stride, padding, output_padding=(0, 0, 0)):
    x = filled(xs, lambda i: math.cos(0.05 * i)).requires_grad_()
    w = filled(ks, lambda i: math.sin(0.1 * i + 0.3) * 0.2).requires_grad_()
    oc = ks[1] if transposed else ks[0]
    b = filled((oc,), lambda i: 0.1 * i - 0.05).requires_grad_()
    if transposed:
        y = F.conv_transpose3d(x, w, b, stride, padding, output_padding)
    else:
        y = F.conv3d(x, w, b, stride, padding)
    r = filled(tuple(y.shape), lambda i: math.sin(0.07 * i))
    loss = (y * r).sum()
    loss.backward()
    print(f"{name}: shape {tuple(y.shape)}")
    print(f"  sum_y {float(y.sum())!r}  loss {float(loss)!r}")
    print(f"  head {[float(v) for v in y.flatten()[:4]]}")
    print(f"  probe_gx {probe(x.grad)!r}  probe_gw {probe(w.grad)!r}  probe_gb {probe(b.grad)!r}")


case("conv3d s(2,2,2) p(1,1,1)", False, (2, 3, 5, 6, 7), (4, 3, 3, 3, 3), (2, 2, 2), (1, 1, 1))
case("conv3d s(1,2,2) p(0,1,1)", False, (1, 2, 6, 7, 7), (3, 2, 3, 3, 3), (1, 2, 2), (0, 1, 1))
case("conv3d s(1,2,1) p(2,0,1) k(5,3,2)", False, (2, 2, 6, 7, 6), (3, 2, 5, 3, 2), (1, 2, 1), (2, 0, 1))
case("conv_transpose3d s(2,2,2) p(1,1,1) op(1,1,1)", True, (2, 3, 3, 4, 5), (3, 4, 3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
case("conv_transpose3d s(1,2,2) p(2,2,2) op(0,1,1)", True, (1, 4, 5, 4, 4), (4, 2, 5, 5, 5), (1, 2, 2), (2, 2, 2), (0, 1, 1))
