"""Reference values for aezoo-metrics' Bjøntegaard delta rate (VCEG-M33):
cubic fits of log(rate) against PSNR for the anchor and the test curve,
integrated over the PSNR range both cover; BD-rate = exp(mean difference) − 1,
in percent (negative: the test needs fewer bits at equal PSNR). With fewer
than four points per curve the fit's degree is the number of points − 1.

    python3 scripts/pins/bd_rate_ref.py      # numpy
"""
import numpy as np


def bd_rate(r1, d1, r2, d2):
    deg = min(3, len(r1) - 1, len(r2) - 1)
    p1 = np.polyfit(d1, np.log(r1), deg)
    p2 = np.polyfit(d2, np.log(r2), deg)
    lo, hi = max(min(d1), min(d2)), min(max(d1), max(d2))
    i1 = np.polyval(np.polyint(p1), hi) - np.polyval(np.polyint(p1), lo)
    i2 = np.polyval(np.polyint(p2), hi) - np.polyval(np.polyint(p2), lo)
    return (np.exp((i2 - i1) / (hi - lo)) - 1) * 100


jpeg = ([0.25, 0.5, 0.75, 1.0, 1.5], [26.1, 29.4, 31.3, 32.6, 34.5])
ours = ([0.2, 0.4, 0.7, 1.1], [27.0, 30.1, 32.4, 34.0])
print("4-5 points:", repr(bd_rate(*jpeg, *ours)))
print("3 points  :", repr(bd_rate([0.3, 0.6, 1.2], [27.0, 30.0, 33.5], [0.25, 0.5, 1.0], [27.2, 30.4, 33.0])))
print("2 points  :", repr(bd_rate([0.5, 1.0], [30.0, 33.0], [0.6, 1.1], [30.5, 33.5])))
