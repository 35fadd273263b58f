"""Hillis-Steele prefix scans equal numpy's sequential scans (the simulator relies on them)."""

import jax.numpy as jnp
import numpy as np
import pytest

from vidur_jax.sim import scan


@pytest.mark.parametrize("n", [1, 2, 3, 31, 32, 33, 100])
def test_scans_match_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.integers(-5, 9, (4, n)).astype(np.int32)
    np.testing.assert_array_equal(scan.cumsum(jnp.asarray(x)), np.cumsum(x, axis=-1))
    np.testing.assert_array_equal(scan.excl_cumsum(jnp.asarray(x)), np.cumsum(x, axis=-1) - x)
    np.testing.assert_array_equal(scan.cummax(jnp.asarray(x)), np.maximum.accumulate(x, axis=-1))
    np.testing.assert_array_equal(scan.cummin(jnp.asarray(x)), np.minimum.accumulate(x, axis=-1))
    b = x > 0
    np.testing.assert_array_equal(scan.prefix_true(jnp.asarray(b)), np.cumprod(b, axis=-1).astype(bool))
    np.testing.assert_array_equal(scan.cumsum(jnp.asarray(b)), np.cumsum(b, axis=-1))
    f = rng.random((3, n))
    np.testing.assert_allclose(scan.cumsum(jnp.asarray(f)), np.cumsum(f, axis=-1), rtol=1e-12)
