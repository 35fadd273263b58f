"""vidur_jax.struct: frozen pytree dataclasses (flax.struct's job without importing flax),
and the CLI's exit without interpreter teardown."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vidur_jax.struct import pytree_dataclass, static_field


@pytree_dataclass
class Pair:
    a: jax.Array
    b: jax.Array | None = None
    step: int = static_field(default=8)


def test_children_in_field_order_and_static_fields_in_the_treedef():
    p = Pair(jnp.ones(2), jnp.zeros(3), step=4)
    leaves, treedef = jax.tree_util.tree_flatten(p)
    assert [x.shape for x in leaves] == [(2,), (3,)]
    assert jax.tree_util.tree_unflatten(treedef, leaves).step == 4
    # a different static value is a different tree structure (a new jit cache entry)
    assert treedef != jax.tree_util.tree_structure(Pair(jnp.ones(2), jnp.zeros(3), step=5))
    # None children are empty subtrees, as with flax.struct
    assert len(jax.tree_util.tree_leaves(Pair(jnp.ones(2)))) == 1


def test_jit_traces_children_and_keeps_static_fields_python_values():
    @jax.jit
    def scaled(p):
        assert isinstance(p.step, int)
        return p.a * p.step

    assert scaled(Pair(jnp.ones(2), step=3)).tolist() == [3.0, 3.0]
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, Pair(jnp.ones(2), jnp.ones(1), step=3))
    assert doubled.a.tolist() == [2.0, 2.0] and doubled.step == 3


def test_frozen_with_replace():
    p = Pair(jnp.ones(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.a = jnp.zeros(2)
    q = p.replace(step=16)
    assert q.step == 16 and p.step == 8 and q.a is p.a


def test_cli_exit_flushes_what_was_printed():
    # stdout is a pipe, so block-buffered: os._exit alone would drop the text
    code = (
        "import sys\n"
        "from vidur_jax.__main__ import _exit_without_teardown\n"
        "sys.stdout.write('summary ' * 100)\n"
        "sys.stderr.write('progress')\n"
        "_exit_without_teardown(0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0
    assert res.stdout == "summary " * 100 and res.stderr == "progress"
