#!/usr/bin/env python3
"""TensorFlow SAME-padding references pinned in crates/aezoo-nn/tests/nn/.

usage: python3 scripts/pins/same_pad_tf.py   (needs tensorflow-cpu)

2-D: tf.nn.conv2d(padding="SAME") on x[i, j] = ((7*i + 3*j) % 11) / 10 with
kernel w[a, b] = ((5*a + 2*b) % 7) / 6 - 0.5, for (h, w, k, s) cases with odd
and even sizes and kernel < stride; prints the flattened output.
3-D: tf.nn.conv3d(padding="SAME") output shapes for video-like inputs.
"""
import numpy as np
import tensorflow as tf

for (h, w, k, s) in [(7, 8, 3, 2), (8, 7, 2, 3), (6, 6, 4, 2), (5, 9, 3, 1)]:
    x = np.array([[((7 * i + 3 * j) % 11) / 10 for j in range(w)] for i in range(h)], dtype=np.float64)
    kw = np.array([[((5 * a + 2 * b) % 7) / 6 - 0.5 for b in range(k)] for a in range(k)], dtype=np.float64)
    y = tf.nn.conv2d(x[None, :, :, None], kw[:, :, None, None], strides=s, padding="SAME").numpy()
    print(f"conv2d h={h} w={w} k={k} s={s} out={y.shape[1]}x{y.shape[2]}")
    print("[" + ", ".join(f"{v:.15e}" for v in y.ravel()) + "]")

for (t, h, w, kt, kh, kw, st, sh, sw) in [(20, 64, 64, 3, 4, 4, 1, 2, 2), (5, 7, 6, 3, 4, 4, 1, 2, 2), (9, 9, 9, 2, 2, 2, 3, 3, 3)]:
    x = tf.zeros((1, t, h, w, 1), dtype=tf.float32)
    k = tf.zeros((kt, kh, kw, 1, 1), dtype=tf.float32)
    y = tf.nn.conv3d(x, k, strides=[1, st, sh, sw, 1], padding="SAME")
    print(f"conv3d in={t}x{h}x{w} k={kt}x{kh}x{kw} s={st}x{sh}x{sw} out={'x'.join(str(d) for d in y.shape[1:4])}")
