"""Reference values for aezoo-compress's entropy model, from SciPy: the
probability mass of the integer interval [ŷ − ½, ŷ + ½] under a Laplace
(loc, scale), as −log₂ P (bits), for a few channels and values including a
far tail (where 1 − F cancels in single precision).

    python3 scripts/pins/codec_ref.py       # scipy 1.x
"""
import numpy as np
from scipy.stats import laplace

locs = [0.0, 0.3, -1.2]
scales = [1.0, 0.5, 3.0]
values = [[0.0, 1.0, -2.0, 15.0], [0.0, 2.0, -1.0, 7.0], [-1.0, 5.0, -30.0, 0.0]]
for c, (m, b) in enumerate(zip(locs, scales)):
    y = np.array(values[c])
    # mirrored to the left tail, as the mass is symmetric about the median
    up = laplace.cdf(y + 0.5, m, b) - laplace.cdf(y - 0.5, m, b)
    tail = laplace.sf(y - 0.5, m, b) - laplace.sf(y + 0.5, m, b)
    p = np.where(y > m, tail, up)
    print(f"channel {c} loc {m} scale {b}: bits {[repr(float(v)) for v in -np.log2(p)]}")
