"""Reference values for aezoo-graph and aezoo-metrics' ranking tests.

The GAE loss, the VGAE KL and the normalised adjacency exactly as the GAE
reference code computes them (github.com/tkipf/gae: preprocessing.py
`preprocess_graph`, optimizer.py `OptimizerAE` / `OptimizerVAE`), in
TensorFlow, on a fixed 7-node graph; ROC AUC and AP from scikit-learn on
scores with ties.

    python3 scripts/pins/graph_ref.py     # tensorflow-cpu 2.21, scikit-learn 1.9, scipy
"""
import numpy as np
import scipy.sparse as sp
import tensorflow as tf
from sklearn.metrics import average_precision_score, roc_auc_score

tf.keras.backend.set_floatx("float64")
n, d = 7, 3
edges = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (1, 6)]
A = sp.lil_matrix((n, n))
for u, v in edges:
    A[u, v] = A[v, u] = 1
A = A.tocsr()

# preprocessing.preprocess_graph
adj_ = A + sp.eye(n)
rowsum = np.array(adj_.sum(1))
deg_inv_sqrt = sp.diags(np.power(rowsum, -0.5).flatten())
adj_norm = adj_.dot(deg_inv_sqrt).transpose().dot(deg_inv_sqrt).toarray()
print("adj_norm row 2:", ", ".join(f"{v:.15e}" for v in adj_norm[2]))

# train.py: pos_weight, norm; labels = adj + I
pos_weight = float(n * n - A.sum()) / A.sum()
norm = n * n / float((n * n - A.sum()) * 2)
labels = (A + sp.eye(n)).toarray()

Z = np.array([[np.sin(1.3 * i + 0.7 * k) * 1.5 for k in range(d)] for i in range(n)])
LS = np.array([[np.cos(0.9 * i - 0.4 * k) * 0.3 for k in range(d)] for i in range(n)])
z = tf.Variable(Z)
ls = tf.Variable(LS)
with tf.GradientTape() as tape:
    logits = tf.reshape(tf.matmul(z, tf.transpose(z)), [-1])  # InnerProductDecoder, act=identity
    cost = norm * tf.reduce_mean(
        tf.nn.weighted_cross_entropy_with_logits(logits=logits, labels=tf.reshape(labels, [-1]), pos_weight=pos_weight)
    )
g = tape.gradient(cost, z).numpy()
print(f"pos_weight {pos_weight:.15e} norm {norm:.15e}")
print(f"recon loss {cost.numpy():.15e}")
print("d/dZ row 3:", ", ".join(f"{v:.15e}" for v in g[3]))

with tf.GradientTape() as tape:
    kl = (0.5 / n) * tf.reduce_mean(tf.reduce_sum(1 + 2 * ls - tf.square(z) - tf.square(tf.exp(ls)), 1))
    neg = -kl  # OptimizerVAE: cost -= kl
gl = tape.gradient(neg, ls).numpy()
print(f"-kl {neg.numpy():.15e}")
print("d(-kl)/dlog_std row 4:", ", ".join(f"{v:.15e}" for v in gl[4]))

scores = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.5, 0.3, 0.3, 0.2, 0.1])
y = np.array([1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 0, 0])
print(f"roc_auc {roc_auc_score(y, scores):.15e} ap {average_precision_score(y, scores):.15e}")
s2 = np.array([0.5] * 6)
y2 = np.array([1, 0, 1, 0, 0, 1])
print(f"all tied: roc_auc {roc_auc_score(y2, s2):.15e} ap {average_precision_score(y2, s2):.15e}")
