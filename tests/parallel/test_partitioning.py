"""Partition rules: the FSDP tactic, explicit layouts, first-match order and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pathfm import parallel
from pathfm.errors import ConfigError
from pathfm.parallel.partitioning import bytes_per_device, fsdp_spec, tree_shardings


def test_fsdp_splits_the_largest_divisible_dimension():
    assert fsdp_spec((384, 1152), 4, 0) == P(None, "fsdp")
    assert fsdp_spec((1152, 384), 4, 0) == P("fsdp", None)
    assert fsdp_spec((6, 10), 4, 0) == P()  # nothing divisible: replicated
    assert fsdp_spec((12, 10), 4, 0) == P("fsdp", None)  # the largest that divides
    assert fsdp_spec((8, 8), 4, 0) == P("fsdp", None)  # first among equals
    assert fsdp_spec((), 4, 0) == P()
    assert fsdp_spec((64, 64), 4, 2**13) == P()  # below the minimum size
    assert fsdp_spec((64, 64), 1, 0) == P()


def test_rules_apply_first_match_to_every_copy_of_a_parameter():
    mesh = parallel.make_mesh(2, 4)
    leaf = jax.ShapeDtypeStruct((16, 32), jnp.float32)
    state = {
        "params": {"head": {"kernel": leaf}, "backbone": {"qkv": {"kernel": leaf}}},
        "extra": {"teacher": {"head": {"kernel": leaf}}},
        "opt_state": ({"mu": {"backbone": {"qkv": {"kernel": leaf}}}},),
    }
    rules = ((r"head/", "replicate"), (r"qkv/kernel", ("fsdp", None)), (r".*", "fsdp"))
    sh = tree_shardings(state, mesh, rules)
    assert sh["params"]["head"]["kernel"].spec == P()
    assert sh["extra"]["teacher"]["head"]["kernel"].spec == P()
    assert sh["params"]["backbone"]["qkv"]["kernel"].spec == P("fsdp", None)
    assert sh["opt_state"][0]["mu"]["backbone"]["qkv"]["kernel"].spec == P("fsdp", None)
    # 16 x 32 float32 = 2 KiB replicated; split 4 ways over fsdp: 512 B per device.
    assert bytes_per_device(state["params"]["head"], sh["params"]["head"]) == 2048
    assert bytes_per_device(state["params"]["backbone"], sh["params"]["backbone"]) == 512


def test_bad_rules_name_the_rule_and_the_leaf():
    mesh = parallel.make_mesh(2, 4)
    tree = {"w": jax.ShapeDtypeStruct((6, 10), jnp.float32)}
    with pytest.raises(ConfigError, match=r"rules\[0\].*'model'"):
        tree_shardings(tree, mesh, ((".*", (None, "model")),))
    with pytest.raises(ConfigError, match=r"rules\[0\].*layout 'zero3'"):
        tree_shardings(tree, mesh, ((".*", "zero3"),))
    with pytest.raises(ConfigError, match=r"bad regex"):
        tree_shardings(tree, mesh, (("(", "fsdp"),))
    with pytest.raises(ConfigError, match=r"w of shape \(6, 10\) cannot be split 4 ways"):
        tree_shardings(tree, mesh, ((".*", ("fsdp", None)),))
    with pytest.raises(ConfigError, match="one entry per dimension"):
        tree_shardings(tree, mesh, ((".*", ("fsdp",)),))


def test_mesh_shape_resolves_minus_one_and_rejects_bad_products():
    assert parallel.mesh_shape(-1, 2, 8) == (4, 2)
    assert parallel.mesh_shape(2, -1, 8) == (2, 4)
    with pytest.raises(ValueError, match="does not cover the 8 devices"):
        parallel.mesh_shape(3, -1, 8)
    mesh = parallel.make_mesh(2, 4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    x = parallel.batch_from_global(np.arange(16.0).reshape(8, 2), mesh)
    assert x.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in x.addressable_shards} == {(1, 2)}  # one row per device
    np.testing.assert_array_equal(np.asarray(x), np.arange(16.0).reshape(8, 2))
