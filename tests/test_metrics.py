"""The first-layer metrics on hand-built weights and gates (issue 26): each metric for a drift along
the background mean of either sign and for none, in float64, against values worked out by hand.

A dictionary of 4 core and 4 background features is the standard basis of R^12 (so a weight's
projections are its coordinates); u = (1, 1, 1, 1) / 2 on the background coordinates.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import identity

CORE, BG, D, M_NEURONS = 4, 4, 12, 8
TOL = dict(rtol=1e-12, atol=1e-12)


def setting(bg_train=(0.0, 1.0), core="linear", n_classes=2, dataset="synthetic"):
    from contamination.data import Sizes, Split

    M = jnp.eye(CORE + BG, D)
    sizes = Sizes(jnp.int32(CORE), jnp.int32(BG), jnp.int32(D), jnp.int32(4), jnp.int32(4))
    y = jnp.asarray([1.0, 1.0, -1.0, -1.0]) if n_classes == 2 else jnp.arange(4.0) % n_classes
    train = Split(jnp.ones((4, D)), y, jnp.ones(4))
    return M, sizes, jnp.asarray(bg_train), train


def init_weights():
    """Step-0 weights: every neuron of norm 1 (so scale0 = 1), with no component along u."""
    w0 = np.zeros((M_NEURONS, D))
    w0[:, CORE:CORE + BG] = np.asarray([[1, -1, 0, 0], [0, 0, 1, -1]] * 4) / np.sqrt(2)  # bg but orthogonal to u
    return jnp.asarray(w0)


def make_ref(w0, deep_w0=(), **kw):
    from contamination.metrics import reference

    M, sizes, bg_train, train = setting(**kw)
    return reference(w0, M, CORE, sizes, bg_train, jnp.ones(M_NEURONS), train,
                     n_classes=kw.get("n_classes", 2), core=kw.get("core", "linear"),
                     dataset=kw.get("dataset", "synthetic"), deep_w0=deep_w0), sizes, bg_train


def drifted(w0, along_u, along_core=0.0):
    """w0 plus `along_u[k]` times u and `along_core` times the unit core direction, per neuron."""
    u = np.zeros(D)
    u[CORE:CORE + BG] = 0.5
    c = np.zeros(D)
    c[:CORE] = 0.5
    return w0 + jnp.asarray(np.asarray(along_u)[:, None] * u[None, :] + along_core * c[None, :])


DRIFTS = {  # the drift along u per neuron: 6 of 8 neurons well past the threshold (0.375), 2 not
    "positive": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.0],
    "negative": [-0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.1, 0.0],
    "none": [0.0] * 8,
}


@identity
@pytest.mark.parametrize("kind", DRIFTS)
def test_contamination_counts_either_sign_and_reports_it(kind):
    from contamination.metrics import mean_direction_metrics

    w0 = init_weights()
    ref, sizes, bg_train = make_ref(w0)
    np.testing.assert_allclose(float(ref.scale0), 1.0, **TOL)
    w = drifted(w0, DRIFTS[kind], along_core=1.0)
    out = mean_direction_metrics(w, ref, jnp.ones(M_NEURONS), sizes.bg, bg_train, jnp.asarray([[-1.0, 0.0]]))
    frac, sign = float(out["contaminated_frac"]), float(out["contamination_sign"])
    if kind == "none":
        assert frac == 0.0 and np.isnan(sign)
    else:
        assert frac == 0.75  # 6 of 8 neurons: a drift of -0.5 counts as +0.5 does
        assert sign == (1.0 if kind == "positive" else -1.0)
    # bg_shift_rms: the learned part's pre-activation shift, dp_k * (mean_ood - mean_train) * sqrt(d_bg)
    dp = np.asarray(DRIFTS[kind])
    np.testing.assert_allclose(float(out["bg_shift_rms"][0]), np.sqrt(np.mean((dp * -1.0 * 2.0) ** 2)), **TOL)


@identity
@pytest.mark.parametrize("kind", DRIFTS)
def test_contamination_ratio_is_two_sided_and_scale_free(kind):
    """sum_k |<dw_k, mu_bg>| / sum_k |sum_core mu_j y <dw_k, m_j>|: mu_bg = 0.5 on every background
    coordinate, mu_core = 1/2 on every core coordinate (the linear core)."""
    from contamination.metrics import contamination_ratio

    w0 = init_weights()
    ref, _, _ = make_ref(w0)
    ones = jnp.ones(M_NEURONS)
    w = drifted(w0, DRIFTS[kind], along_core=1.0)
    # per neuron: background 0.5 * sum_bg dw = 0.5 * 2 * drift; core: 0.5 * sum_core dw = 0.5 * 2 * 1
    expected = np.sum(np.abs(DRIFTS[kind])) / M_NEURONS
    np.testing.assert_allclose(float(contamination_ratio(w, ref, ones)), expected, **TOL)
    # scale-free: the whole drift twice as large reads the same
    w2 = w0 + 2 * (w - w0)
    np.testing.assert_allclose(float(contamination_ratio(w2, ref, ones)), expected, **TOL)
    assert np.isnan(float(contamination_ratio(w0, ref, ones)))  # nothing learned at step 0


@identity
def test_contamination_ratio_where_it_does_not_apply():
    from contamination.metrics import contamination_ratio

    w0 = init_weights()
    w = drifted(w0, DRIFTS["positive"], along_core=1.0)
    ones = jnp.ones(M_NEURONS)
    ref, _, _ = make_ref(w0, core="nonlinear")  # the core's class means are zero
    assert np.isnan(float(contamination_ratio(w, ref, ones)))
    ref, _, _ = make_ref(w0, bg_train=(-0.5, 0.5))  # a zero-mean background carries no mean to weight
    assert float(contamination_ratio(w, ref, ones)) == 0.0
    # K = 4 classes, each owning one core feature: a drift along the sum of the core features is
    # class-blind (the same response to every class) and learns nothing the ratio counts
    ref, _, _ = make_ref(w0, n_classes=4)
    assert np.isnan(float(contamination_ratio(w, ref, ones)))
    w_sel = w0 + jnp.asarray(np.eye(D)[0])[None, :] + (w - drifted(w0, [0.0] * 8, along_core=1.0))
    # neuron k: <dw, mu_c> = 0.5 for c = 0, 0 else: RMS over classes of the centred responses
    core = np.sqrt(np.mean((np.asarray([0.5, 0, 0, 0]) - 0.125) ** 2))
    np.testing.assert_allclose(float(contamination_ratio(w_sel, ref, ones)),
                               np.mean(np.abs(DRIFTS["positive"])) * 0.5 * 2 / core, **TOL)


@identity
@pytest.mark.parametrize("kind", DRIFTS)
def test_bg_norm_is_net_of_init(kind):
    from contamination.metrics import projection_metrics

    w0 = init_weights()
    ref, sizes, _ = make_ref(w0)
    M = jnp.eye(CORE + BG, D)
    w = drifted(w0, DRIFTS[kind])
    out = projection_metrics(w, M, CORE, jnp.ones(M_NEURONS), sizes.bg, ref)
    # the learned background weights are drift * u: norm |drift|
    np.testing.assert_allclose(float(out["bg_norm"]), np.mean(np.abs(DRIFTS[kind])), **TOL)
    # without a reference (a fixed teacher), the whole background norm, init included
    total = projection_metrics(w0, M, CORE, jnp.ones(M_NEURONS), sizes.bg)
    np.testing.assert_allclose(float(total["bg_norm"]), 1.0, **TOL)


@identity
def test_bg_norm_on_digits_reads_the_border_direction_only():
    """On real data the background varies along its mean direction only: a learned weight
    orthogonal to it inside the border is not counted; one along it is."""
    from contamination.metrics import projection_metrics

    w0 = jnp.zeros((M_NEURONS, D))
    ref, sizes, _ = make_ref(w0, dataset="digits")
    M = jnp.eye(CORE + BG, D)
    across = w0.at[:, CORE:CORE + BG].set(jnp.asarray([1.0, -1.0, 1.0, -1.0]))
    along = drifted(w0, DRIFTS["negative"])
    assert float(projection_metrics(across, M, CORE, jnp.ones(M_NEURONS), sizes.bg, ref)["bg_norm"]) == 0.0
    np.testing.assert_allclose(float(projection_metrics(along, M, CORE, jnp.ones(M_NEURONS), sizes.bg, ref)["bg_norm"]),
                               np.mean(np.abs(DRIFTS["negative"])), **TOL)


@identity
def test_gradient_share_along_a_direction():
    """`gradient_share` on one unit row: a loss whose input gradient lies along u scores 1, one
    orthogonal to u inside the background 0 (it would score 1 on all the background's pixels)."""
    from contamination.data import Split
    from contamination.metrics import gradient_share

    u = jnp.zeros(D).at[CORE:CORE + BG].set(0.5)
    across = jnp.zeros(D).at[CORE:CORE + BG].set(jnp.asarray([0.5, -0.5, 0.5, -0.5]))
    split = Split(jnp.ones((4, D)) * 0.1, jnp.asarray([1.0, -1.0, 1.0, -1.0]), jnp.ones(4))
    for v, share in ((u, 1.0), (across, 0.0), (u + across, 0.5)):
        got = gradient_share(lambda x, v=v: x @ v, split, "mse", u[None, :])
        np.testing.assert_allclose(float(got), share, **TOL)
    full = gradient_share(lambda x: x @ across, split, "mse", jnp.eye(CORE + BG, D)[CORE:])
    np.testing.assert_allclose(float(full), 1.0, **TOL)


def gates_to_pre(open_on_pos, activation):
    """Pre-activations (n = 8 samples, 4 per class; one neuron per column) with the gate open on
    the + class and shut on the - class (`open_on_pos`), or the same on both (None)."""
    if activation in ("relu", "leaky_relu", "gelu"):
        o, s = 8.0, -8.0
    else:  # even derivatives: open near 0, shut in either tail
        o, s = 0.0, 8.0
    if open_on_pos is None:
        col = [o, s, o, s, o, s, o, s]
    else:
        col = [o] * 4 + [s] * 4 if open_on_pos else [s] * 4 + [o] * 4
    return jnp.asarray(col)[:, None]


@identity
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu", "sigmoid", "tanh"])
def test_act_asym_scores_a_perfectly_selective_gate_one_for_every_activation(activation):
    from contamination.metrics import activation_asymmetry

    y = jnp.asarray([1.0] * 4 + [-1.0] * 4)
    slope = jnp.asarray(0.1)
    for open_on_pos, lo, hi in ((True, 0.99, 1.0), (False, 0.99, 1.0), (None, 0.0, 1e-6)):
        a = float(activation_asymmetry(gates_to_pre(open_on_pos, activation), y, jnp.ones(1), activation, slope))
        assert lo <= a <= hi, (activation, open_on_pos, a)
    # a symmetric tanh neuron (pre +c on one class, -c on the other) gates both classes alike
    sym = jnp.asarray([2.0] * 4 + [-2.0] * 4)[:, None]
    assert float(activation_asymmetry(sym, y, jnp.ones(1), "tanh", slope)) < 1e-6
    assert float(activation_asymmetry(sym, y, jnp.ones(1), "linear", slope)) == 0.0


@identity
def test_act_asym_null_level_does_not_grow_with_k():
    """Gates independent of the class: the former max - min over K class means grew with K; the
    bias-corrected pairwise spread stays near 0 at every K (here within 0.1 of it, 400 neurons)."""
    from contamination.metrics import activation_asymmetry

    rng = np.random.default_rng(0)
    n, m = 240, 400
    pre = jnp.asarray(rng.normal(size=(n, m)))
    null = {}
    for k in (2, 4, 10):
        y = jnp.asarray(np.arange(n) % k * 1.0) if k > 2 else jnp.asarray(np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
        null[k] = float(activation_asymmetry(pre, y, jnp.ones(m), "relu", jnp.asarray(0.0), k, jnp.ones(n)))
    assert max(null.values()) < 0.1, null
    # one class open, the others shut: every pair that differs scores 1
    y10 = jnp.asarray(np.arange(n) % 10 * 1.0)
    one_open = jnp.where(y10 == 3, 1.0, -1.0)[:, None]
    got = float(activation_asymmetry(one_open, y10, jnp.ones(1), "relu", jnp.asarray(0.0), 10, jnp.ones(n)))
    np.testing.assert_allclose(got, np.sqrt(9 / 45), rtol=1e-9)


LAYER_DRIFTS = {"positive": [1.0, 0.5], "negative": [-1.0, -0.5], "none": [0.0, 0.0]}


@identity
@pytest.mark.parametrize("kind", LAYER_DRIFTS)
def test_layer_ratio_of_a_deeper_layer(kind):
    """Layer 2 of a network whose layer-1 representation (3 units, 4 test samples) is (1, 0, 0.5)
    on class +1 and (0, 1, 0.5) on class -1, the background mean's part of it (0, 0, 0.5): a layer-2
    unit learning dW_k = (1, -1, t_k) responds 0.5 t_k to the background mean and +-1 to the classes
    (C_k = 1), so the ratio is sum_k 0.5 |t_k| / 2."""
    from contamination.metrics import LAYER_RATIO, contamination_ratio, layer_ratios
    from contamination.model import Deep, Params

    w0 = init_weights()
    W0 = jnp.asarray([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3], [0.0, 0.0, 0.0]])
    ref, _, _ = make_ref(w0, deep_w0=(W0,))
    t = LAYER_DRIFTS[kind]
    dW = np.asarray([[1.0, -1.0, t[0]], [1.0, -1.0, t[1]], [9.0, 9.0, 9.0]])  # row 3: a padded unit
    w1 = drifted(w0, DRIFTS[kind], along_core=1.0)
    h = jnp.asarray([[1.0, 0.0, 0.5]] * 2 + [[0.0, 1.0, 0.5]] * 2)
    hc = h - jnp.asarray([0.0, 0.0, 0.5])
    y, rows = jnp.asarray([1.0, 1.0, -1.0, -1.0]), jnp.ones(4)
    mask2 = jnp.asarray([1.0, 1.0, 0.0])

    def ratios(dw, active=True):
        params = Params(w1, jnp.zeros(M_NEURONS), jnp.zeros(3), jnp.asarray(0.0), ((W0 + jnp.asarray(dw), jnp.zeros(3)),))
        deep = Deep((mask2,), (jnp.asarray(active),), mask2)
        return {k: float(v) for k, v in layer_ratios(params, ref, jnp.ones(M_NEURONS), deep, [h], [hc], y, rows,
                                                     2).items()}

    out = ratios(dW)
    assert set(out) == {LAYER_RATIO.format(1), LAYER_RATIO.format(2)}
    assert out[LAYER_RATIO.format(1)] == float(contamination_ratio(w1, ref, jnp.ones(M_NEURONS)))
    np.testing.assert_allclose(out[LAYER_RATIO.format(2)], 0.25 * np.sum(np.abs(t)), **TOL)
    np.testing.assert_allclose(ratios(2 * dW)[LAYER_RATIO.format(2)], 0.25 * np.sum(np.abs(t)), **TOL)  # scale-free
    assert np.isnan(ratios(0 * dW)[LAYER_RATIO.format(2)])  # nothing learned
    assert np.isnan(ratios(dW, active=False)[LAYER_RATIO.format(2)])  # a layer the run does not have


CONV_DRIFTS = {"positive": [1.0, 0.5], "negative": [-1.0, -0.5], "none": [0.0, 0.0]}


@identity
@pytest.mark.parametrize("kind", CONV_DRIFTS)
def test_cnn_contamination_ratio(kind):
    """Two positions of a picture: at the first the border's mean image is 0.5 on every pixel of the
    patch but its centre (a digit pixel), at the second it is 0 and class 0's mean digit image is 1
    on the centre (class 1's is 0 everywhere). A filter learning t_c on its corner and 1 on its
    centre responds 0.5 t_c to the border mean (first position) and 1 or 0 to the classes (second:
    C = 1/2), so the ratio over (filter, position) units is sum_c 0.5 |t_c| / (2 * 1/2)."""
    from contamination.cnn import conv_ratio

    bg = np.zeros((2, 9))
    bg[0] = 0.5
    bg[0, 4] = 0.0
    cls0 = np.zeros((2, 9))
    cls0[1, 4] = 1.0
    mean_patches = jnp.asarray(np.stack([bg, cls0, np.zeros((2, 9))]))
    t = CONV_DRIFTS[kind]
    dk = np.zeros((3, 9))
    dk[:2, 0], dk[:2, 4] = t, 1.0
    dk[2] = 7.0  # a padded filter
    mask = jnp.asarray([1.0, 1.0, 0.0])
    expected = 0.5 * np.sum(np.abs(t)) / 1.0
    got = float(conv_ratio(jnp.asarray(dk.reshape(3, 3, 3)), mean_patches, mask))
    np.testing.assert_allclose(got, expected, **TOL)
    np.testing.assert_allclose(float(conv_ratio(jnp.asarray(3 * dk.reshape(3, 3, 3)), mean_patches, mask)),
                               expected, **TOL)  # scale-free
    assert np.isnan(float(conv_ratio(jnp.zeros((3, 3, 3)), mean_patches, mask)))  # nothing learned
