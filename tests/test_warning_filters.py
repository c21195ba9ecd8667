"""pyproject.toml's warning filters: a DeprecationWarning from jax, flax or orbax is an error in the tests, whether
it is attributed to the package itself or to its caller; the one known qwix deprecation is not."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("module", ["jax._src.deprecations", "flax.nnx", "orbax.checkpoint._src.path",
                                    "sora_jax.training.loop", "qwix._src.core", "test_warning_filters"])
def test_a_deprecation_attributed_to_these_packages_or_their_callers_is_an_error(module):
    with pytest.raises(DeprecationWarning, match="going away"):
        warnings.warn_explicit("going away", DeprecationWarning, "file.py", 1, module=module)


def test_flax_warning_raised_for_its_caller_is_an_error():
    from flax import nnx

    with pytest.raises(DeprecationWarning, match="'VariableState' was removed"):
        nnx.VariableState  # noqa: B018  flax warns with stacklevel=2: attributed to this test module.


@pytest.mark.parametrize(("module", "message"), [
    ("qwix._src.utils.flax_util", "'VariableState' was removed, this is just an alias to 'Variable'."),
    ("tensorflow.python.util.deprecation", "going away"),
    ("test_profiling", "builtin type event_stats has no __module__ attribute"),
])
def test_the_known_qwix_deprecation_and_other_packages_deprecations_are_not_errors(module, message):
    warnings.warn_explicit(message, DeprecationWarning, "file.py", 1, module=module)  # Raises if a filter says error.
